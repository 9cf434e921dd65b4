"""Queue contract tests, run over every implementation: in-process LocalQueue, LocalQueue through the broker
process, and Redis (RESP2 and RESP3) when the machine's Redis answers on 127.0.0.1:6379."""

from __future__ import annotations

import logging
import multiprocessing
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from common.redact import redact_url
from pipeline.transport.queues import (
    BrokerEndpoint,
    LocalBroker,
    LocalQueue,
    Message,
    Queue,
    QueueError,
    RedisQueue,
    dead_letter_stream,
    open_queue,
    start_local_broker,
)
from tests.queue_defaults import QUEUE

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("REID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
KINDS = ["local", "local-broker", "redis", "redis-resp3"]
# Redis trims MAXLEN ~ by whole radix-tree nodes (stream-node-max-entries, 100 by default).
REDIS_TRIM_SLACK = 100


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.skip(f"Redis is not reachable at {redact_url(REDIS_URL)} ({type(err).__name__}: {err})")
    return client


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    b = start_local_broker()
    yield b
    b.shutdown()


@pytest.fixture
def names() -> Iterator[Callable[[str], str]]:
    """Unique stream/group names for one test; Redis keys under the prefix are deleted afterwards."""
    prefix = f"test-queues:{uuid.uuid4().hex}:"
    yield lambda name: prefix + name
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except redis.RedisError:
        pass  # Redis absent: nothing was written there


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_queue(kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Queue]]:
    """Factory of queues of the parametrized kind: ``make_queue(maxlen=..., max_deliveries=...)``."""
    made: list[Queue] = []
    if kind.startswith("redis"):
        _redis_or_skip()
    url = REDIS_URL + ("?protocol=3" if kind == "redis-resp3" else "")

    def make(**kw) -> Queue:
        if kind == "local":
            q: Queue = LocalQueue(**{**QUEUE, **kw})
        elif kind == "local-broker":
            b: LocalBroker = request.getfixturevalue("broker")
            q = b.queue(**{**QUEUE, **kw})
        else:
            q = RedisQueue(url, retry_for_s=5.0, **{**QUEUE, **kw})
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()


def _payloads(n: int) -> list[bytes]:
    return [f"payload-{i}".encode() * (i + 1) for i in range(n)]


def _drain(q: Queue, stream: str, group: str, consumer: str) -> list[Message]:
    got: list[Message] = []
    while batch := q.consume(stream, group, consumer, count=50, block_ms=0):
        got += batch
    return got


# ---------------------------------------------------------------------------------------- the contract


def test_every_kind_meets_the_protocol(make_queue: Callable[..., Queue]) -> None:
    assert isinstance(make_queue(), Queue)


@pytest.mark.parametrize("n", [0, 1, 7])
def test_publish_consume_ack_and_no_redelivery(make_queue: Callable[..., Queue], names, n: int) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    payloads = [b""] + _payloads(n - 1) if n else []
    ids = [q.publish(s, p) for p in payloads]

    got = q.consume(s, g, "c1", count=100, block_ms=100)

    assert [m.payload for m in got] == payloads
    assert [m.id for m in got] == ids and all(m.stream == s and m.deliveries == 1 for m in got)
    assert q.pending_count(s, g) == n
    assert q.ack(s, g, [m.id for m in got]) == n
    assert q.pending_count(s, g) == 0 and q.lag(s, g) == 0
    # Nothing acknowledged comes back: not as new entries, not through reclaim.
    assert q.consume(s, g, "c1", count=100, block_ms=0) == []
    assert q.reclaim(s, g, "c2", min_idle_ms=0) == []
    assert q.ack(s, g, [m.id for m in got]) == 0  # acknowledging twice is a no-op


def test_unacknowledged_message_is_reclaimed_after_idle(make_queue: Callable[..., Queue], names) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    mid = q.publish(s, b"work")
    [first] = q.consume(s, g, "c1", block_ms=100)

    assert q.reclaim(s, g, "c2", min_idle_ms=60_000) == []  # not idle long enough
    time.sleep(0.3)
    [again] = q.reclaim(s, g, "c2", min_idle_ms=250)

    assert (first.id, first.deliveries) == (mid, 1)
    assert (again.id, again.payload, again.deliveries) == (mid, b"work", 2)
    assert q.reclaim(s, g, "c3", min_idle_ms=250) == []  # the claim reset its idle time
    assert q.ack(s, g, [again.id]) == 1 and q.pending_count(s, g) == 0


_CHILD = """
import os, sys, time
from pipeline.transport.queues import BrokerEndpoint, open_queue
kind, stream, group = sys.argv[1:4]
if kind.startswith("redis"):
    q = open_queue(os.environ["TEST_QUEUE_URL"], maxlen=100, max_deliveries=5)
else:
    q = open_queue(None, broker=BrokerEndpoint(sys.argv[4], bytes.fromhex(os.environ["TEST_QUEUE_KEY"])), maxlen=100, max_deliveries=5)
q.ensure_group(stream, group)
msgs = q.consume(stream, group, "doomed", count=1, block_ms=3000)
print(msgs[0].id if msgs else "none", flush=True)
time.sleep(60)  # never acknowledges: killed before that
"""


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(
            f"child printed nothing in {timeout}s; its stderr ends: {err[-2000:].decode(errors='replace')}"
        )
    return proc.stdout.readline().decode().strip()


# an in-process LocalQueue has no other process to kill; "local-broker" is the cross-process case
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "local"])
def test_message_of_a_killed_consumer_is_not_lost(
    make_queue: Callable[..., Queue], names, kind: str, request: pytest.FixtureRequest
) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    mid = q.publish(s, b"tracklet bytes")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    args = [sys.executable, "-c", _CHILD, kind, s, g]
    if kind.startswith("redis"):
        env["TEST_QUEUE_URL"] = REDIS_URL + ("?protocol=3" if kind == "redis-resp3" else "")
    else:
        b: LocalBroker = request.getfixturevalue("broker")
        env["TEST_QUEUE_KEY"] = b.authkey.hex()
        args.append(b.address)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _read_line(proc, timeout=30) == mid
    finally:
        proc.send_signal(signal.SIGKILL)  # after XREADGROUP, before XACK
        proc.wait(timeout=10)
    assert q.pending_count(s, g) == 1

    assert q.reclaim(s, g, "survivor", min_idle_ms=60_000) == []
    time.sleep(0.25)
    [msg] = q.reclaim(s, g, "survivor", min_idle_ms=200)

    assert (msg.id, msg.payload, msg.deliveries) == (mid, b"tracklet bytes", 2)
    q.ack(s, g, [msg.id])
    assert q.pending_count(s, g) == 0 and q.lag(s, g) == 0


def test_a_consumer_restarted_under_its_name_recovers_only_its_own_pending(
    make_queue: Callable[..., Queue], names
) -> None:
    q = make_queue(max_deliveries=3)
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    ids = [q.publish(s, p) for p in _payloads(5)]
    mine = q.consume(s, g, "reid-1", count=3, block_ms=100)  # then reid-1 dies
    other = q.consume(s, g, "reid-2", count=2, block_ms=100)  # reid-2 is alive and busy
    assert [m.id for m in mine + other] == ids

    got = q.recover(s, g, "reid-1")  # reid-1 restarted

    assert [m.id for m in got] == ids[:3] and all(m.deliveries == 2 for m in got)
    assert [m.payload for m in got] == [m.payload for m in mine]
    assert q.recover(s, g, "reid-3") == []  # nothing of anyone else's
    assert q.ack(s, g, [m.id for m in got]) == 3
    assert q.recover(s, g, "reid-1") == []
    assert q.pending_count(s, g) == 2  # reid-2's are untouched
    # recovering the same entry again and again makes it a poison message like any redelivery
    assert [m.deliveries for m in q.recover(s, g, "reid-2")] == [2, 2]
    assert [m.deliveries for m in q.recover(s, g, "reid-2")] == [3, 3]
    assert q.recover(s, g, "reid-2") == []
    assert [d.original_id for d in q.dead_letters(s)] == ids[3:]


@pytest.mark.parametrize("mode", ["alternating", "threads"])
def test_two_consumers_share_a_group_without_duplicates(
    make_queue: Callable[..., Queue], names, mode: str
) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    sent = {q.publish(s, p) for p in _payloads(30)}
    got: dict[str, list[str]] = {"a": [], "b": []}

    def take(consumer: str, block_ms: int) -> bool:
        batch = q.consume(s, g, consumer, count=3, block_ms=block_ms)
        got[consumer] += [m.id for m in batch]
        q.ack(s, g, [m.id for m in batch])
        return bool(batch)

    if mode == "alternating":
        while True:
            took_a, took_b = take("a", 0), take("b", 0)
            if not (took_a or took_b):
                break
        assert len(got["a"]) == len(got["b"]) == 15
    else:

        def work(consumer: str) -> None:
            deadline = time.monotonic() + 10
            while take(consumer, 50) and time.monotonic() < deadline:
                pass

        threads = [threading.Thread(target=work, args=(c,)) for c in got]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)

    everything = got["a"] + got["b"]
    assert len(everything) == len(set(everything)) == len(sent)
    assert set(everything) == sent
    assert q.pending_count(s, g) == 0


def test_ensure_group_is_idempotent_and_keeps_the_position(make_queue: Callable[..., Queue], names) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    q.ensure_group(s, g)
    q.publish(s, b"one")
    [m] = q.consume(s, g, "c", block_ms=100)
    q.ensure_group(s, g)  # must not reset the group: "one" is not handed out again
    assert q.consume(s, g, "c", block_ms=0) == []
    assert q.pending_count(s, g) == 1 and q.length(s) == 1 and m.payload == b"one"


def test_group_sees_entries_published_before_it_existed(make_queue: Callable[..., Queue], names) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.publish(s, b"early")
    q.ensure_group(s, g)
    assert [m.payload for m in q.consume(s, g, "c", block_ms=100)] == [b"early"]


@pytest.mark.parametrize("op", ["consume", "pending_count", "lag", "reclaim"])
def test_missing_group_raises(make_queue: Callable[..., Queue], names, op: str) -> None:
    q = make_queue()
    s = names("s")
    q.ensure_group(s, names("other"))
    calls = {
        "consume": lambda: q.consume(s, names("nope"), "c", block_ms=0),
        "pending_count": lambda: q.pending_count(s, names("nope")),
        "lag": lambda: q.lag(s, names("nope")),
        "reclaim": lambda: q.reclaim(s, names("nope"), "c", min_idle_ms=0),
    }
    with pytest.raises(QueueError, match="NOGROUP"):
        calls[op]()


@pytest.mark.parametrize("max_deliveries", [1, 2, 4])
def test_poison_message_is_dead_lettered_after_max_deliveries(
    make_queue: Callable[..., Queue], names, max_deliveries: int
) -> None:
    q = make_queue(max_deliveries=max_deliveries)
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    mid = q.publish(s, b"poison")
    seen = [m.deliveries for m in q.consume(s, g, "c", block_ms=100)]
    for _ in range(max_deliveries + 2):
        seen += [m.deliveries for m in q.reclaim(s, g, "c", min_idle_ms=0)]

    assert seen == list(range(1, max_deliveries + 1))  # handed out max_deliveries times, never again
    assert q.pending_count(s, g) == 0
    [dead] = q.dead_letters(s)
    assert (dead.original_id, dead.payload, dead.group, dead.stream) == (mid, b"poison", g, s)
    assert dead.deliveries == max_deliveries + 1 and "max_deliveries" in dead.reason
    assert q.length(dead_letter_stream(s)) == 1


@pytest.mark.parametrize("reason", ["", "WireError: crops.jpeg[3]: not a complete JPEG", "x" * 5000])
def test_dead_letter_records_reason_and_acknowledges(
    make_queue: Callable[..., Queue], names, reason: str
) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    assert q.dead_letters(s) == []  # the empty case
    q.publish(s, b"undecodable")
    [m] = q.consume(s, g, "c", block_ms=100)

    q.dead_letter(s, g, m, reason)

    [dead] = q.dead_letters(s)
    assert (dead.original_id, dead.payload, dead.deliveries) == (m.id, b"undecodable", 1)
    assert dead.reason == reason[:500]
    assert q.pending_count(s, g) == 0 and q.reclaim(s, g, "c", min_idle_ms=0) == []


@pytest.mark.parametrize(
    ("published", "consumed", "acked"),
    [(0, 0, 0), (5, 0, 0), (5, 3, 0), (5, 3, 3), (5, 5, 2), (5, 5, 5)],
)
def test_pending_count_and_lag(
    make_queue: Callable[..., Queue], names, published: int, consumed: int, acked: int
) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    for p in _payloads(published):
        q.publish(s, p)
    got = q.consume(s, g, "c", count=consumed, block_ms=0) if consumed else []
    q.ack(s, g, [m.id for m in got[:acked]])

    assert len(got) == consumed
    assert q.pending_count(s, g) == consumed - acked
    assert q.lag(s, g) == published - acked


@pytest.mark.parametrize("block_ms", [0, 300])
def test_consume_on_an_empty_stream_waits_block_ms_without_spinning(
    make_queue: Callable[..., Queue], names, block_ms: int
) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    wall, cpu = time.monotonic(), time.process_time()
    assert q.consume(s, g, "c", count=5, block_ms=block_ms) == []
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    assert block_ms / 1000 * 0.9 <= wall < block_ms / 1000 + 1.0
    assert cpu < 0.1 + wall / 4  # a spinning wait would burn about `wall` seconds of CPU


def test_blocked_consume_wakes_up_on_publish(make_queue: Callable[..., Queue], names) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    publisher = threading.Timer(0.2, lambda: q.publish(s, b"late"))
    start = time.monotonic()
    publisher.start()
    got = q.consume(s, g, "c", block_ms=5000)
    publisher.join()
    assert [m.payload for m in got] == [b"late"]
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("with_group", [False, True])
def test_maxlen_bounds_the_stream(
    make_queue: Callable[..., Queue], names, kind: str, with_group: bool
) -> None:
    maxlen = 20
    q = make_queue(maxlen=maxlen)
    s, g = names("s"), names("g")
    if with_group:
        q.ensure_group(s, g)
    last = ""
    for _ in range(30):
        for p in _payloads(10):
            last = q.publish(s, p)
        if with_group:
            q.ack(s, g, [m.id for m in _drain(q, s, g, "c")])

    slack = REDIS_TRIM_SLACK if kind.startswith("redis") else 0
    assert 0 < q.length(s) <= maxlen + slack < 300
    if with_group:
        assert q.lag(s, g) == 0
    q.ensure_group(s, names("late"))  # a new group reads what is left: the newest entries
    assert _drain(q, s, names("late"), "c")[-1].id == last


def test_local_queue_never_trims_what_a_group_still_owes(names) -> None:
    q = LocalQueue(**{**QUEUE, "maxlen": 5})
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    for p in _payloads(12):
        q.publish(s, p)
    taken = q.consume(s, g, "c", count=4, block_ms=0)  # 4 pending, 8 undelivered
    assert q.length(s) == 12 and q.lag(s, g) == 12
    q.ack(s, g, [taken[0].id, taken[2].id])
    assert q.length(s) == 10  # only the acknowledged ones could go
    q.ack(s, g, [m.id for m in _drain(q, s, g, "c") + taken])
    assert q.length(s) == 5 and q.lag(s, g) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda q, n: q.ensure_group("", n("g")),
        lambda q, n: q.ensure_group(n("s"), ""),
        lambda q, n: q.publish(n("s"), "text is not bytes"),
        lambda q, n: q.consume(n("s"), n("g"), "c", count=0),
        lambda q, n: q.consume(n("s"), n("g"), "c", block_ms=-1),
        lambda q, n: q.consume(n("s"), n("g"), "", block_ms=0),
        lambda q, n: q.ack(n("s"), n("g"), ["not-an-id"]),
        lambda q, n: q.reclaim(n("s"), n("g"), "c", min_idle_ms=-5),
        lambda q, n: q.dead_letters(n("s"), count=0),
    ],
)
def test_bad_arguments_raise_value_error(make_queue: Callable[..., Queue], names, call) -> None:
    with pytest.raises(ValueError):
        call(make_queue(), names)


def test_closed_queue_cannot_be_used(make_queue: Callable[..., Queue], names) -> None:
    q = make_queue()
    q.close()
    q.close()  # idempotent
    with pytest.raises(QueueError, match="closed"):
        q.publish(names("s"), b"x")


# ------------------------------------------------------------------------------------ across processes


def _spawned_publisher(q: Queue, stream: str, payloads: list[bytes]) -> None:
    for p in payloads:
        q.publish(stream, p)
    q.close()


def test_queue_pickles_into_a_spawned_process(make_queue: Callable[..., Queue], names, kind: str) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    ctx = multiprocessing.get_context("spawn")
    if kind == "local":
        with pytest.raises(TypeError, match="start_local_broker"):
            ctx.Process(target=_spawned_publisher, args=(q, s, [b"x"])).start()
        return
    child = ctx.Process(target=_spawned_publisher, args=(q, s, _payloads(3)))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert [m.payload for m in q.consume(s, g, "parent", count=10, block_ms=1000)] == _payloads(3)


def test_broker_dies_with_the_process_that_started_it() -> None:
    code = (
        "import multiprocessing, time\nfrom pipeline.transport.queues import start_local_broker\nb = start_local_broker()\n"
        "pids = [p.pid for p in multiprocessing.active_children()]\n"
        "print(b.address, b.authkey.hex(), *pids, flush=True)\ntime.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        address, key, *broker_pids = _read_line(proc, timeout=60).split()
        LocalQueue.connect(address, bytes.fromhex(key), **QUEUE).close()  # it is up
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while True:
        try:
            LocalQueue.connect(address, bytes.fromhex(key), **QUEUE).close()
        except QueueError:
            break  # gone
        if time.monotonic() > deadline:
            for pid in broker_pids:  # do not leave the orphan behind when failing
                os.kill(int(pid), signal.SIGKILL)
            pytest.fail("the broker outlived the process that started it")
        time.sleep(0.1)


def test_connect_failures_raise_queue_error(broker: LocalBroker) -> None:
    with pytest.raises(QueueError):
        LocalQueue.connect(broker.address, b"wrong key", **QUEUE)
    with pytest.raises(QueueError):
        LocalQueue.connect("/nonexistent/dir/broker.sock", broker.authkey, **QUEUE)


def test_queue_fails_cleanly_after_broker_shutdown(names) -> None:
    with start_local_broker() as b:
        q = b.queue(**QUEUE)
        q.publish(names("s"), b"x")
    with pytest.raises(QueueError):
        q.publish(names("s"), b"y")


def test_broker_endpoint_hides_the_authkey(broker: LocalBroker) -> None:
    assert broker.authkey.hex() not in repr(broker.endpoint) and repr(broker.authkey) not in repr(
        broker.endpoint
    )


# ------------------------------------------------------------------------------------- factory and URLs


@pytest.mark.parametrize(
    ("url", "use_broker", "expected"),
    [
        (None, False, LocalQueue),
        ("", False, LocalQueue),
        (None, True, LocalQueue),
        (REDIS_URL, False, RedisQueue),
    ],
)
def test_open_queue_chooses_the_implementation(
    broker: LocalBroker, url, use_broker: bool, expected: type
) -> None:
    q = open_queue(url, broker=broker.endpoint if use_broker else None, **{**QUEUE, "maxlen": 7})
    try:
        assert type(q) is expected and isinstance(q, Queue) and q.maxlen == 7  # type: ignore[attr-defined]
    finally:
        q.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"redis_url": REDIS_URL, "broker": BrokerEndpoint("/x", b"k")},
        {"redis_url": None, "retry_for_s": 3.0},
    ],
)
def test_open_queue_rejects_contradictory_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        open_queue(**kwargs, **QUEUE)


def test_password_stays_out_of_repr_and_unreachable_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    q = RedisQueue("redis://:secretpw@127.0.0.1:1/0", retry_for_s=0.5, **QUEUE)  # nothing listens on port 1
    start = time.monotonic()
    with pytest.raises(QueueError) as info:
        q.publish("s", b"x")
    elapsed = time.monotonic() - start
    q.close()
    assert 0.4 < elapsed < 5, "retries are bounded by retry_for_s"
    texts = [repr(q), str(info.value), repr(info.value.__cause__), caplog.text]
    assert all("secretpw" not in t for t in texts)
    assert "redis://:***@127.0.0.1:1/0" in str(info.value) and "unreachable" in str(info.value)


def test_password_stays_out_of_server_errors(names) -> None:
    client = _redis_or_skip()
    key = names("plain-string")
    client.set(key, "not a stream")
    # Redis 7's default user has no password and accepts any: this URL connects, and the error comes from
    # the command.
    q = RedisQueue("redis://:secretpw@127.0.0.1:6379/0", retry_for_s=2, **QUEUE)
    with pytest.raises(QueueError) as info:
        q.ensure_group(key, "g")
    q.close()
    assert "WRONGTYPE" in str(info.value)  # propagated, not swallowed as if it were BUSYGROUP
    assert "secretpw" not in str(info.value) and "secretpw" not in repr(q)


def test_wrong_credentials_fail_at_once_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    _redis_or_skip()
    caplog.set_level(logging.DEBUG)
    q = RedisQueue("redis://nosuchuser:secretpw@127.0.0.1:6379/0", retry_for_s=30, **QUEUE)
    start = time.monotonic()
    with pytest.raises(QueueError, match="credentials") as info:
        q.length("anything")
    assert time.monotonic() - start < 5  # not retried for 30 s
    assert "secretpw" not in str(info.value) and "secretpw" not in caplog.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(port: int, *extra: str) -> subprocess.Popen:
    """A private redis-server on ``port`` (``extra``: more command-line options), once it answers PING."""
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def test_redis_restart_mid_run_is_survived() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed, so a private Redis cannot be restarted")
    port = _free_port()
    servers = [_start_redis(port)]  # a private server: the machine's Redis is shared, never restarted here
    q = RedisQueue(f"redis://127.0.0.1:{port}/0", retry_for_s=15, **QUEUE)
    restarter = threading.Timer(1.0, lambda: servers.append(_start_redis(port)))
    try:
        q.ensure_group("s", "g")
        q.publish("s", b"before")
        q.ack("s", "g", [m.id for m in q.consume("s", "g", "c", block_ms=100)])
        servers[0].kill()  # SIGKILL without persistence: the stream and the group are gone
        servers[0].wait(timeout=10)
        restarter.start()
        start = time.monotonic()
        q.publish("s", b"after")  # retried with backoff until the server is back
        assert time.monotonic() - start >= 0.5
        got = q.consume("s", "g", "c", block_ms=100)  # NOGROUP: the group it had ensured is re-created
        assert [m.payload for m in got] == [b"after"]
    finally:
        restarter.cancel()
        restarter.join(timeout=15)
        q.close()
        for server in servers:
            server.kill()
            server.wait(timeout=10)


def test_unix_socket_url_works(tmp_path: Path) -> None:
    """A ``unix://`` URL (which the config accepts) reaches Redis: no TCP-only option is passed to its socket."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed, so a private Redis on a Unix socket cannot be started")
    sock = tmp_path / "redis.sock"
    server = _start_redis(_free_port(), "--unixsocket", str(sock), "--unixsocketperm", "700")
    q = RedisQueue(f"unix://{sock}?db=0", retry_for_s=2, **QUEUE)
    try:
        q.ensure_group("s", "g")
        q.publish("s", b"over a unix socket")
        got = q.consume("s", "g", "c", block_ms=100)
        assert [m.payload for m in got] == [b"over a unix socket"]
        assert q.ack("s", "g", [m.id for m in got]) == 1 and q.lag("s", "g") == 0
    finally:
        q.close()
        server.kill()
        server.wait(timeout=10)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:6379/0?token=t0ken",  # redis-py has no such option
        "redis://:s3cret@127.0.0.1:6379/0?db=notanumber",
    ],
)
def test_unusable_url_is_a_queue_error_at_construction_without_secrets(url: str) -> None:
    with pytest.raises(QueueError, match="invalid Redis URL") as info:
        RedisQueue(url, **QUEUE)
    text = f"{info.value} {info.value.__cause__!r} {info.value.__context__!r}"
    assert "s3cret" not in text and "t0ken" not in text and "\n" not in str(info.value)


def test_undecodable_payload_goes_to_dead_letters_with_the_wire_reason(
    make_queue: Callable[..., Queue], names
) -> None:
    from pipeline.transport.wire import WireError, decode_tracklet

    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    q.publish(s, b"\x92\x01\x02")  # msgpack, but a list: not a tracklet message
    [m] = q.consume(s, g, "reid-0", block_ms=100)
    with pytest.raises(WireError) as info:
        decode_tracklet(m.payload)
    q.dead_letter(s, g, m, f"WireError: {info.value}")
    [dead] = q.dead_letters(s)
    assert dead.reason == "WireError: expected a msgpack map, got list" and dead.payload == m.payload
    assert q.lag(s, g) == 0


# ---------------------------------------------------------------------------------------- ack and delete


@pytest.mark.parametrize(("published", "deleted"), [(0, 0), (1, 1), (5, 0), (5, 2), (5, 5)])
def test_ack_delete_removes_the_entries_from_stream_and_pending(
    make_queue: Callable[..., Queue], names, published: int, deleted: int
) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    q.publish(s, b"poison")
    [bad] = q.consume(s, g, "c", block_ms=100)
    q.dead_letter(s, g, bad, "undecodable")
    payloads = _payloads(published)
    for p in payloads:
        q.publish(s, p)
    got = q.consume(s, g, "c", count=100, block_ms=0)

    assert q.ack(s, g, [m.id for m in got[:deleted]], delete=True) == deleted

    # The dead-lettered entry was only acknowledged, so it stays in the stream (MAXLEN trims it).
    assert q.length(s) == 1 + published - deleted
    assert q.pending_count(s, g) == published - deleted
    assert q.lag(s, g) == published - deleted
    # What is left pending is exactly what was not deleted, and it can still be taken over.
    left = q.reclaim(s, g, "c2", min_idle_ms=0, count=100)
    assert [m.payload for m in left] == payloads[deleted:]
    assert q.consume(s, g, "c", count=100, block_ms=0) == []
    # Acknowledging (and deleting) again is a no-op; dead letters are untouched.
    assert q.ack(s, g, [m.id for m in got[:deleted]], delete=True) == 0
    [dead] = q.dead_letters(s)
    assert (dead.original_id, dead.payload) == (bad.id, b"poison")
    assert q.length(dead_letter_stream(s)) == 1


def test_ack_delete_entries_are_gone_from_the_redis_stream(names) -> None:
    client = _redis_or_skip()
    q = RedisQueue(REDIS_URL, retry_for_s=5.0, **QUEUE)
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    ids = [q.publish(s, p) for p in _payloads(3)]
    q.consume(s, g, "c", count=3, block_ms=100)

    assert q.ack(s, g, ids[:2], delete=True) == 2

    assert client.xlen(s) == 1
    assert [i.decode() for i, _ in client.xrange(s)] == ids[2:]
    assert [r["message_id"].decode() for r in client.xpending_range(s, g, "-", "+", 10)] == ids[2:]
    q.close()
    client.close()


def test_plain_ack_keeps_the_entries(make_queue: Callable[..., Queue], names) -> None:
    q = make_queue()
    s, g = names("s"), names("g")
    q.ensure_group(s, g)
    for p in _payloads(3):
        q.publish(s, p)
    got = q.consume(s, g, "c", count=3, block_ms=0)

    assert q.ack(s, g, [m.id for m in got]) == 3
    assert q.length(s) == 3 and q.pending_count(s, g) == 0


def test_ack_delete_rejects_a_non_bool(make_queue: Callable[..., Queue], names) -> None:
    q = make_queue()
    with pytest.raises(ValueError, match="delete"):
        q.ack(names("s"), names("g"), ["1-0"], delete="yes")  # type: ignore[arg-type]
