"""The re-ID and matcher workers against the real queues and the real stores.

Every test runs over the in-process ``LocalQueue`` and Redis (127.0.0.1:6379, or ``REID_TEST_REDIS_URL``), and
the matcher tests also over SQLite (a temporary file) and PostgreSQL (``REID_TEST_PG_URL``, a unique schema per
store, dropped afterwards). Cases skip, saying why, only when Redis or PostgreSQL is unreachable, or when the
shared PKU-Reid crops or OSNet weights are absent (the re-ID worker on real data).

What is checked: one embedding per tracklet with the tracklet's key and span, and same-person cross-camera
embeddings closer than different-person ones; malformed messages in the dead-letter stream with a reason while
the worker keeps going; nothing acknowledged before the SQL commit; a redelivered message changes nothing; a
restarted matcher keeps its identities and numbering; the same input gives the same identities; and a consumer
SIGKILLed mid-message is completed by another one, exactly once in SQL.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pipeline.matching.centering import CameraCentering
from pipeline.matching.matcher import Matcher
from pipeline.matching.topology import Topology
from pipeline.matching.worker import restore_matcher, run_matcher_worker
from pipeline.transport.messages import Tracklet, TrackletEmbedding, TrackletPicture
from pipeline.transport.queues import (
    LocalBroker,
    LocalQueue,
    Queue,
    QueueError,
    RedisQueue,
    start_local_broker,
)
from pipeline.transport.retry import RETRYABLE_ERRORS, is_retryable
from pipeline.transport.wire import decode_embedding, decode_tracklet, encode_embedding, encode_tracklet
from storage import repository as repo
from storage.db import Store, StoreError, open_store
from storage.models import SightingRow, TrackletRow
from tests import matching_defaults as build
from tests.conftest import PG_URL, REDIS_URL, pg_unreachable, redis_unreachable, shared_path
from tests.queue_defaults import QUEUE

T0 = 1_700_000_000.0
MODEL = "test-model@0123456789ab"
DIM = 128
PARTS = 6
SESSION = "run-1"
PKU_IDS = ("007", "008", "010")  # held out from the default checkpoint's training ids
PKU_CAMS = ("01", "02")
WORKER_TIMEOUT_S = 60.0


# ----------------------------------------------------------------------------------------------------
# Services


def _pg_admin(sql: str, **params: object) -> None:
    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


@pytest.fixture
def names() -> Iterator[Callable[[str], str]]:
    """Unique stream/group names for one test; Redis keys under the prefix are deleted afterwards."""
    prefix = f"test-workers:{uuid.uuid4().hex}:"
    yield lambda name: prefix + name
    if redis_unreachable():
        return
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def broker() -> Iterator[LocalBroker]:
    """The embedded broker, for tests whose consumers live in another process."""
    b = start_local_broker()
    yield b
    b.shutdown()


@pytest.fixture(params=["local", "redis"])
def queue_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis" and (reason := redis_unreachable()):
        pytest.skip(reason)
    return request.param


@pytest.fixture
def queue(queue_kind: str) -> Iterator[Queue]:
    """A queue of the parametrized kind, in this process only."""
    q: Queue = (
        LocalQueue(**QUEUE) if queue_kind == "local" else RedisQueue(REDIS_URL, retry_for_s=5.0, **QUEUE)
    )
    yield q
    q.close()


@dataclass(frozen=True)
class Target:
    url: str
    schema: str | None


@pytest.fixture(params=["sqlite", "postgresql"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], tuple[Store, Target]]]:
    """Factory of fresh, empty stores of the parametrized database: each call a new file or a new schema."""
    if request.param == "postgresql" and (reason := pg_unreachable()):
        pytest.skip(reason)
    stores: list[Store] = []
    schemas: list[str] = []

    def make() -> tuple[Store, Target]:
        if request.param == "sqlite":
            target = Target(f"sqlite:///{tmp_path / f'store{len(stores)}.db'}", None)
        else:
            schema = f"reid_test_{uuid.uuid4().hex[:16]}"
            schemas.append(schema)
            target = Target(PG_URL, schema)
        store = open_store(target.url, schema=target.schema)
        stores.append(store)
        return store, target

    yield make
    for store in stores:
        store.dispose()
    for schema in schemas:
        _pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# ----------------------------------------------------------------------------------------------------
# Messages and expectations


def _people(n: int, seed: int) -> np.ndarray:
    """(n, DIM) random unit vectors: in 128 dimensions two of them have cosine about 0 +- 0.1."""
    v = np.random.default_rng(seed).standard_normal((n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _embedding(
    camera: str, track: int, start: float, vector: np.ndarray, *, chunk: int = 0
) -> TrackletEmbedding:
    """A tracklet embedding of ``camera`` over ``[T0 + start, T0 + start + 5]``."""
    frame = int(start * 10)
    return TrackletEmbedding(
        camera_id=camera,
        track_id=track,
        chunk=chunk,
        first_frame=frame,
        last_frame=frame + 50,
        start_time=T0 + start,
        end_time=T0 + start + 5.0,
        num_frames=51,
        embedding=(vector / np.linalg.norm(vector)).astype(np.float32),
        part_visibility=np.linspace(0.5, 1.0, PARTS, dtype=np.float32),
        model=MODEL,
        boxes=np.array([[10, 20, 60, 140], [12, 20, 62, 141]], np.float32),
    )


def _scene(n_people: int = 3, cameras: Sequence[str] = ("A", "B"), seed: int = 0) -> list[TrackletEmbedding]:
    """Every person seen once per camera, the cameras one after the other (50 s apart), a little noise on
    each view: same-person cosine about 0.99, different people about 0 (threshold 0.6)."""
    rng = np.random.default_rng(seed + 1)
    people = _people(n_people, seed)
    out = []
    for c, camera in enumerate(cameras):
        for p, person in enumerate(people):
            noisy = person + rng.standard_normal(DIM) * 0.1 / np.sqrt(DIM)
            out.append(_embedding(camera, 10 * c + p + 1, 50.0 * c + p, noisy))
    return out


def _expected(
    batches: Sequence[Sequence[TrackletEmbedding]], *, next_id: int = 1
) -> dict[tuple[str, int, int], tuple[int, float | None]]:
    """What the worker must store: the pure matcher's decision, batch by batch, keyed by tracklet key."""
    matcher = build.matcher(build.gallery(next_id=next_id), model=MODEL)
    out = {}
    for batch in batches:
        for a in matcher.assign_by_closing_time(batch, window_s=build.DEFAULTS.window_s):
            out[a.key] = (a.identity_id, a.similarity)
    return out


@dataclass(frozen=True)
class Snapshot:
    counts: dict[str, int]
    sightings: dict[tuple[str, int, int], tuple[int, float | None]]
    identities: list[repo.IdentitySummary]


def _snapshot(store: Store) -> Snapshot:
    t, s = TrackletRow, SightingRow
    with store.session(readonly=True) as session:
        counts = repo.counts(session)
        rows = session.execute(
            sa.select(t.camera_id, t.track_id, t.chunk, s.identity_id, s.similarity).join(
                s, s.tracklet_id == t.id
            )
        ).all()
        identities = repo.list_identities(session)
    sightings: dict[tuple[str, int, int], tuple[int, float | None]] = {}
    for r in rows:
        key = (r.camera_id, int(r.track_id), int(r.chunk))
        assert key not in sightings, f"tracklet {key} stored twice"
        sightings[key] = (int(r.identity_id), r.similarity)
    return Snapshot(counts, sightings, identities)


def _assert_sightings(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, (identity, sim) in expected.items():
        got_identity, got_sim = got[key]
        assert got_identity == identity, f"{key}: identity {got_identity}, expected {identity}"
        assert (got_sim is None) == (sim is None), f"{key}: similarity {got_sim}, expected {sim}"
        if sim is not None:
            assert got_sim == pytest.approx(sim, abs=1e-6), key


EMPTY_SQL = {"tracklets": 0, "embeddings": 0, "identities": 0, "sightings": 0}


def _sql_rows(snap: Snapshot) -> dict[str, int]:
    return {k: snap.counts[k] for k in EMPTY_SQL}


def _publish(queue: Queue, stream: str, embeddings: Sequence[TrackletEmbedding]) -> list[str]:
    return [queue.publish(stream, encode_embedding(e, session=SESSION)) for e in embeddings]


def _restore(store: Store) -> Matcher:
    """The matcher worker's own restore, with the config schema's defaults."""
    d = build.DEFAULTS
    return restore_matcher(
        store, topology=Topology(), threshold=build.THRESHOLD, model=MODEL, max_prototypes=d.max_prototypes
    )


def _restoring(store: Store) -> Callable[[], Matcher]:
    return lambda: _restore(store)


WORKER_TIMING = {
    "window_s": build.DEFAULTS.window_s,
    "max_wait_s": build.DEFAULTS.max_wait_s,
    "group": build.DEFAULTS.group,
}


def _bounded(worker: Callable[..., int], timeout: float = WORKER_TIMEOUT_S, **kw) -> int:
    """Run ``worker(stop=..., drain=<set>, **kw)`` in a thread; fail the test if it has not drained in time."""
    stop, drain = threading.Event(), threading.Event()
    drain.set()
    result: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(worker(stop=stop, drain=drain, **kw))
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        stop.set()
        thread.join(30)
        pytest.fail(f"the worker did not drain its stream within {timeout:g}s")
    if errors:
        raise errors[0]
    return result[0]


def _run_matcher(queue: Queue, store, make: Callable[[], Matcher], stream: str, **kw) -> int:
    # Batches of 3 by default: one camera of a _scene() per batch, so later cameras match earlier ones (a
    # batch is assigned against the gallery as it stood before the batch).
    kw = {
        "consumer": "matcher-1",
        "block_ms": 100,
        "retry_s": 0.05,
        "batch_size": 3,
        **WORKER_TIMING,
        **kw,
    }
    return _bounded(run_matcher_worker, queue=queue, store=store, make_matcher=make, stream=stream, **kw)


# ----------------------------------------------------------------------------------------------------
# 1. The re-ID worker on real crops


def _pku_tracklet(
    root: Path, pid: str, cam: str, track_id: int, start: float, *, count: int = 8, camera: str | None = None
) -> Tracklet:
    """A tracklet of PKU-Reid person ``pid`` from its ``cam`` images 1..count, resized to 256x128."""
    crops = np.stack(
        [cv2.resize(cv2.imread(str(root / pid / f"{cam}_{k}.png")), (128, 256)) for k in range(1, count + 1)]
    )  # (T, 256, 128, 3) BGR
    frames = np.arange(count, dtype=np.int64) * 3 + int(start * 10)
    rng = np.random.default_rng(track_id)
    x1 = rng.uniform(0, 500, count)
    y1 = rng.uniform(0, 200, count)
    return Tracklet(
        camera_id=camera or f"cam{cam}",
        track_id=track_id,
        chunk=0,
        first_frame=int(frames[0]),
        last_frame=int(frames[-1]),
        start_time=T0 + start,
        end_time=T0 + start + (count - 1) * 0.3,
        num_frames=(count - 1) * 3 + 1,
        frame_indices=frames,
        timestamps=T0 + start + np.arange(count) * 0.3,
        boxes=np.stack([x1, y1, x1 + 60, y1 + 160], axis=1),
        scores=rng.uniform(0.5, 1.0, count),
        crops=crops,
    )


def _reid_worker(**kw) -> int:
    """``run_reid_worker`` under :func:`_bounded`, with the schema's settings except those ``kw`` gives."""
    from pipeline.config import MatcherConfig, ReIDConfig
    from pipeline.reid.worker import run_reid_worker

    r = ReIDConfig()
    settings = {
        "group": r.group,
        "embedding_group": MatcherConfig().group,
        "consumer": "reid-1",
        "batch_size": r.batch_size,
        "max_wait_ms": r.max_wait_ms,
        "reclaim_idle_ms": r.reclaim_idle_ms,
    }
    return _bounded(run_reid_worker, **{**settings, **kw})


@pytest.fixture(scope="module")
def encoder():
    shared_path("assets/reid/openvino_person_reid/person-reidentification-retail-0277")  # the default backbone
    from models.checkpoint import load_drsta
    from pipeline.config import ReIDConfig
    from pipeline.reid.worker import TrackletEncoder

    reid = ReIDConfig()
    return TrackletEncoder(
        load_drsta(),
        model_name="drsta_openvino_0277_pku@test",
        device="cpu",
        num_frames=None,
        picture_crops=reid.picture_crops,
        picture_quality=reid.picture_quality,
        blur_heads=False,
    )


def test_embeddings_do_not_depend_on_batching(encoder, pku_root: Path) -> None:
    """A tracklet's embedding is bit-identical whichever tracklets the queue delivered with it, so a replay
    (or a restarted worker) reproduces it exactly and the matcher's decisions with it."""
    tracklets = [
        _pku_tracklet(pku_root, pid, cam, 10 * i + j, 5.0 * i)
        for i, pid in enumerate(PKU_IDS)
        for j, cam in enumerate(PKU_CAMS)
    ]
    together = encoder.encode(tracklets)
    alone = [encoder.encode([t])[0] for t in tracklets]
    reordered = encoder.encode(tracklets[::-1])[::-1]
    for a, b, c in zip(together, alone, reordered, strict=True):
        assert np.array_equal(a.embedding, b.embedding) and np.array_equal(a.embedding, c.embedding)
        assert np.array_equal(a.part_visibility, b.part_visibility)


def _empty_tracklet() -> Tracklet:
    return Tracklet(
        "cam09", 99, 0, 0, 0, T0, T0, 0, np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)), np.zeros(0),
        np.zeros((0, 256, 128, 3), np.uint8),
    )  # fmt: skip


# Malformed tracklet messages and the dead-letter reason each must get (a regular expression).
BAD_TRACKLETS = {
    "random bytes": (lambda: np.random.default_rng(7).bytes(333), r"not a msgpack message"),
    "not a map": (lambda: msgpack.packb([1, 2, 3]), r"expected a msgpack map"),
    "an embedding message": (
        lambda: encode_embedding(_embedding("A", 1, 0.0, _people(1, 3)[0]), session=SESSION),
        r"type: expected 'tracklet'",
    ),
    "a tracklet with no crops": (lambda: encode_tracklet(_empty_tracklet(), session=SESSION), r"no crops"),
}


def test_reid_worker_embeds_real_tracklets_and_dead_letters_bad_ones(encoder, queue: Queue, names) -> None:
    root = shared_path("data/pku-reid")
    tracklets = [
        _pku_tracklet(root, pid, cam, track_id=i + 1, start=30.0 * c + i)
        for c, cam in enumerate(PKU_CAMS)
        for i, pid in enumerate(PKU_IDS)
    ]
    person = {t.key: PKU_IDS[t.track_id - 1] for t in tracklets}
    one_crop = _pku_tracklet(root, PKU_IDS[0], "01", track_id=1, start=100.0, count=1, camera="cam03")
    good = [*tracklets, one_crop]
    s_in, s_out, group = names("tracklets"), names("embeddings"), names("reid")

    good_payloads = [encode_tracklet(t, session=f"cam-run-{t.camera_id}") for t in good]
    payloads = list(good_payloads)
    for i, (make, _) in enumerate(BAD_TRACKLETS.values()):  # each bad one between two good ones
        payloads.insert(1 + 2 * i, make())
    ids = [queue.publish(s_in, p) for p in payloads]

    started = time.monotonic()
    done = _reid_worker(
        queue=queue,
        encoder=encoder,
        stream_in=s_in,
        stream_out=s_out,
        group=group,
        batch_size=3,
        max_wait_ms=100,
    )
    elapsed = time.monotonic() - started

    assert done == len(good)
    assert queue.pending_count(s_in, group) == 0 and queue.lag(s_in, group) == 0, (
        "tracklets left unacknowledged"
    )
    dead = queue.dead_letters(s_in)
    assert len(dead) == len(BAD_TRACKLETS)
    for letter, (name, (make, reason)) in zip(dead, BAD_TRACKLETS.items(), strict=True):
        assert letter.payload == make() and letter.original_id == ids[payloads.index(letter.payload)], name
        assert letter.group == group and letter.reason.strip(), name
        assert re.search(reason, letter.reason), f"{name}: reason {letter.reason!r}"

    out = queue.consume(s_out, "matcher", "probe", count=100, block_ms=0)  # the worker created this group
    decoded = [decode_embedding(m.payload) for m in out]
    embeddings = {d.message.key: d.message for d in decoded}
    assert len(decoded) == len(good) and sorted(embeddings) == sorted(t.key for t in good), "one per tracklet"
    for t in good:
        envelope = next(d for d in decoded if d.message.key == t.key)
        e = envelope.message
        assert envelope.session == f"cam-run-{t.camera_id}"
        span = ("first_frame", "last_frame", "start_time", "end_time", "num_frames")
        assert [getattr(e, f) for f in span] == [getattr(t, f) for f in span]
        np.testing.assert_array_equal(e.boxes, t.boxes)
        assert e.model == encoder.model_name
        assert abs(float(np.linalg.norm(e.embedding)) - 1.0) < 1e-4
        assert e.part_visibility.shape == (encoder.model.cfg.num_parts,)
        assert ((e.part_visibility >= 0) & (e.part_visibility <= 1)).all()
    # Each embedding is its own tracklet's (as decoded from the wire, JPEG and all), not a neighbour's.
    direct = encoder.encode([decode_tracklet(p).message for p in good_payloads])
    for d in direct:
        np.testing.assert_allclose(embeddings[d.key].embedding, d.embedding, atol=1e-4)

    same, different = [], []
    for a in tracklets:
        for b in tracklets:
            if a.camera_id < b.camera_id:
                cos = float(embeddings[a.key].embedding @ embeddings[b.key].embedding)
                (same if person[a.key] == person[b.key] else different).append(cos)
    assert len(same) == 3 and len(different) == 6
    assert np.mean(same) > np.mean(different) + 0.05, f"same-person {same}, different-person {different}"
    print(
        f"\nre-ID worker: {len(good)} tracklets in {elapsed:.2f}s; cross-camera cosine same "
        f"{np.mean(same):.3f}, different {np.mean(different):.3f}"
    )


class _MustNotEncode:
    model_name = "never"

    def encode(self, tracklets):
        raise AssertionError(f"encode called with {len(tracklets)} tracklets on an empty stream")


@pytest.mark.parametrize("max_wait_ms", [50, 200])
def test_reid_worker_on_an_empty_stream_returns_promptly(queue: Queue, names, max_wait_ms: int) -> None:
    s_in, s_out = names("tracklets"), names("embeddings")
    started = time.monotonic()
    done = _reid_worker(
        timeout=10,
        queue=queue,
        encoder=_MustNotEncode(),
        stream_in=s_in,
        stream_out=s_out,
        max_wait_ms=max_wait_ms,
    )
    assert done == 0
    assert time.monotonic() - started < 2.0
    assert queue.length(s_out) == 0 and queue.lag(s_out, "matcher") == 0  # the matcher's group exists, empty


# ----------------------------------------------------------------------------------------------------
# 2. The matcher worker


@pytest.mark.parametrize("when", ["in the same batch", "in a later batch"])
def test_redelivered_embedding_changes_nothing_in_sql(queue: Queue, make_store, names, when: str) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    scene = _scene()
    expected = _expected([scene[:3], scene[3:]])
    if when == "in the same batch":
        _publish(queue, stream, [e for e in scene for _ in range(2)])  # A1 A1 A2 A2 A3 A3 B1 B1 ...
        assert _run_matcher(queue, store, _restoring(store), stream, batch_size=6) == len(scene)
    else:
        _publish(queue, stream, scene)
        assert _run_matcher(queue, store, _restoring(store), stream) == len(scene)
        before = _snapshot(store)
        _publish(queue, stream, scene[::-1])  # delivered again, e.g. after a crash between commit and ack
        assert _run_matcher(queue, store, _restoring(store), stream, consumer="matcher-2") == 0
        assert _snapshot(store) == before
    after = _snapshot(store)
    assert _sql_rows(after) == {"tracklets": 6, "embeddings": 6, "identities": 3, "sightings": 6}
    _assert_sightings(after.sightings, expected)
    assert [(i.identity_id, i.num_tracklets, i.cameras) for i in after.identities] == [
        (1, 2, ("A", "B")),
        (2, 2, ("A", "B")),
        (3, 2, ("A", "B")),
    ]
    assert queue.pending_count(stream, "matcher") == 0 and queue.lag(stream, "matcher") == 0
    assert queue.dead_letters(stream) == []


class _FaultyStore:
    """A :class:`Store` whose first write commit fails: by the connection error a dropped connection gives
    (``"commit raises"``), by a programming error (``"bug"``), or, on PostgreSQL, by the server terminating
    the session's connection just before COMMIT is sent (``"backend terminated"``)."""

    def __init__(self, store: Store, fault: str) -> None:
        self._store = store
        self._fault = fault
        self.failures = 0

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        with self._store.session(readonly=readonly) as s:
            if not readonly and self.failures == 0:
                sa.event.listen(s, "before_commit", self._fail)
            yield s

    def _fail(self, session: Session) -> None:
        sa.event.remove(session, "before_commit", self._fail)
        self.failures += 1
        if self._fault == "backend terminated":
            pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            _pg_admin("SELECT pg_terminate_backend(:pid)", pid=pid)
        elif self._fault == "bug":
            raise TypeError("injected: a bug in the transaction")
        else:
            # what the driver raises when the connection drops mid-COMMIT
            raise sa.exc.OperationalError("COMMIT", None, ConnectionResetError("injected: the commit failed"))

    def dispose(self) -> None:
        self._store.dispose()


def _commit_fails_once(queue: Queue, store: Store, stream: str, fault: str, rebuild_fails_once: bool) -> None:
    """Run the matcher worker on a scene while the first commit fails by ``fault``; check that the failure
    left nothing acknowledged and nothing in SQL, and that the retry ends as a run without a fault would."""
    scene = _scene(seed=5)
    _publish(queue, stream, scene)
    faulty = _FaultyStore(store, fault)
    seen_after_failure: list[tuple[int, dict[str, int]]] = []
    calls = 0

    def make() -> Matcher:
        # Called at start, then again after every failed batch: observe what the failure left behind.
        nonlocal calls
        calls += 1
        if calls == 2:
            seen_after_failure.append((queue.pending_count(stream, "matcher"), _sql_rows(_snapshot(store))))
            if rebuild_fails_once:
                raise StoreError("injected: the database is still away")
        return _restore(faulty)

    assert _run_matcher(queue, faulty, make, stream) == len(scene)

    assert faulty.failures == 1, "the fault was never injected"
    assert seen_after_failure == [(3, EMPTY_SQL)], "acknowledged or stored before the commit"
    after = _snapshot(store)
    assert _sql_rows(after) == {"tracklets": 6, "embeddings": 6, "identities": 3, "sightings": 6}
    # The retry decides as if nothing had happened (a gallery left ahead of SQL would not).
    _assert_sightings(after.sightings, _expected([scene[:3], scene[3:]]))
    assert queue.pending_count(stream, "matcher") == 0 and queue.lag(stream, "matcher") == 0
    assert queue.dead_letters(stream) == []


@pytest.mark.parametrize("rebuild_fails_once", [False, True])
def test_nothing_is_acknowledged_before_the_commit(
    queue: Queue, make_store, names, rebuild_fails_once: bool
) -> None:
    store, _ = make_store()
    _commit_fails_once(queue, store, names("embeddings"), "commit raises", rebuild_fails_once)


@pytest.mark.parametrize("make_store", ["postgresql"], indirect=True)
@pytest.mark.parametrize("rebuild_fails_once", [False, True])
def test_database_connection_killed_at_commit_is_retried(
    queue: Queue, make_store, names, rebuild_fails_once: bool
) -> None:
    store, _ = make_store()
    _commit_fails_once(queue, store, names("embeddings"), "backend terminated", rebuild_fails_once)


def _dbapi(kind: type[sa.exc.DBAPIError] = sa.exc.DBAPIError, *, invalidated: bool = False):
    return kind("SELECT 1", None, Exception("injected"), connection_invalidated=invalidated)


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (_dbapi(sa.exc.OperationalError), True),  # server gone, connection dropped
        (_dbapi(invalidated=True), True),  # any driver error that cost the connection
        (_dbapi(sa.exc.InterfaceError, invalidated=True), True),
        (_dbapi(), False),
        (_dbapi(sa.exc.IntegrityError), False),  # a duplicate key: retrying cannot help
        (_dbapi(sa.exc.ProgrammingError), False),
        (StoreError("cannot open store"), True),
        (QueueError("redis unreachable"), True),
        (redis.ConnectionError("refused"), True),
        (redis.TimeoutError("timed out"), True),
        (ConnectionResetError("reset"), True),
        (OSError("no route"), True),
        (redis.ResponseError("WRONGTYPE"), False),
        (TypeError("a bug"), False),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
        (RuntimeError("a bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_only_connection_errors_are_retryable(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable
    assert isinstance(error, RETRYABLE_ERRORS) or not retryable  # what is retryable is also caught


@pytest.mark.parametrize(
    "error",
    [TypeError("injected: a bug in setup"), _dbapi(sa.exc.IntegrityError)],
    ids=["TypeError", "IntegrityError"],
)
def test_a_setup_error_that_is_not_an_outage_stops_the_worker(
    queue: Queue, make_store, names, error: BaseException
) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    _publish(queue, stream, _scene(seed=29)[:3])
    calls = 0

    def make() -> Matcher:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        _run_matcher(queue, store, make, stream, timeout=10)
    assert calls == 1, "retried a programming error"
    assert _sql_rows(_snapshot(store)) == EMPTY_SQL


@pytest.mark.parametrize(
    "error",
    [_dbapi(sa.exc.OperationalError), _dbapi(invalidated=True), StoreError("injected")],
    ids=["OperationalError", "invalidated DBAPIError", "StoreError"],
)
def test_a_setup_outage_is_retried(queue: Queue, make_store, names, error: BaseException) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    scene = _scene(seed=31)
    _publish(queue, stream, scene)
    calls = 0

    def make() -> Matcher:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return _restore(store)

    assert _run_matcher(queue, store, make, stream) == len(scene)
    assert calls == 2
    _assert_sightings(_snapshot(store).sightings, _expected([scene[:3], scene[3:]]))


def test_a_bug_at_commit_stops_the_worker_with_nothing_acknowledged(queue: Queue, make_store, names) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    _publish(queue, stream, _scene(seed=37))
    faulty = _FaultyStore(store, "bug")
    with pytest.raises(TypeError, match="injected"):
        _run_matcher(queue, faulty, lambda: _restore(faulty), stream, timeout=20)
    assert faulty.failures == 1
    assert queue.pending_count(stream, "matcher") == 3 and _sql_rows(_snapshot(store)) == EMPTY_SQL


def test_restarted_matcher_keeps_identities_and_numbering(queue: Queue, make_store, names) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    # An earlier run with another model left identity 41: its embeddings are not comparable, its id is taken.
    with store.session() as s:
        tid = repo.add_tracklet_from(s, _embedding("Z", 1, -500.0, _people(1, 9)[0]), session_key="old-run")
        repo.add_embedding(s, tid, model="old-model", vector=_people(1, 9)[0])
        repo.ensure_identity(s, 41, created_at=T0)
        repo.add_sighting(s, tid, 41, None, T0)
        s.commit()
    scene = _scene(seed=11)
    _publish(queue, stream, scene)
    assert _run_matcher(queue, store, _restoring(store), stream) == len(scene)
    first = {k: v for k, v in _snapshot(store).sightings.items() if k[0] != "Z"}
    _assert_sightings(first, _expected([scene[:3], scene[3:]], next_id=42))

    known = scene[1]  # person 2 in camera A
    later = [
        _embedding("C", 7, 500.0, known.embedding),
        _embedding("C", 8, 500.0, _people(4, 11)[3]),  # someone new
    ]
    _publish(queue, stream, later)
    assert _run_matcher(queue, store, _restoring(store), stream, consumer="matcher-restarted") == 2

    after = _snapshot(store).sightings
    assert {k: after[k] for k in first} == first and after[("Z", 1, 0)] == (41, None)
    person2, sim = after[later[0].key]
    assert person2 == first[known.key][0] and sim == pytest.approx(1.0, abs=1e-5)
    assert after[later[1].key] == (45, None), "new identities continue after the largest stored id (41 + 3)"
    assert _snapshot(store).counts["identities"] == 5


def _other_model() -> bytes:
    return encode_embedding(
        replace(_embedding("A", 90, 0.0, _people(1, 3)[0]), model="another-model"), session=SESSION
    )


def _other_dim() -> bytes:
    e = _embedding("A", 91, 0.0, _people(1, 3)[0])
    return encode_embedding(
        replace(e, embedding=e.embedding[:64] / np.linalg.norm(e.embedding[:64])), session=SESSION
    )


def _not_unit() -> bytes:
    msg = msgpack.unpackb(encode_embedding(_embedding("A", 92, 0.0, _people(1, 3)[0]), session=SESSION))
    msg["embedding"]["data"] = (np.frombuffer(msg["embedding"]["data"], "<f4") * 3).astype("<f4").tobytes()
    return msgpack.packb(msg, use_bin_type=True)


# Embedding messages the matcher cannot use, and the dead-letter reason each must get.
BAD_EMBEDDINGS = {
    "random bytes": (lambda: np.random.default_rng(8).bytes(200), r"not a msgpack message"),
    "a tracklet message": (
        lambda: encode_tracklet(_empty_tracklet(), session=SESSION),
        r"type: expected 'embedding'",
    ),
    "not unit norm": (_not_unit, r"unit L2 norm"),
    "another model": (_other_model, r"another-model"),
    "another dimension": (_other_dim, r"64"),
}


@pytest.mark.parametrize("bad", list(BAD_EMBEDDINGS))
def test_unusable_embedding_is_dead_lettered_and_the_worker_continues(
    queue: Queue, make_store, names, bad: str
) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    make, reason = BAD_EMBEDDINGS[bad]
    scene = _scene(seed=13)
    _publish(queue, stream, scene[:3])
    bad_id = queue.publish(stream, make())  # in the first batch of 4, with camera A's three
    _publish(queue, stream, scene[3:])

    assert _run_matcher(queue, store, _restoring(store), stream, batch_size=4) == len(scene)

    [letter] = queue.dead_letters(stream)
    assert (letter.original_id, letter.payload, letter.group) == (bad_id, make(), "matcher")
    assert re.search(reason, letter.reason), f"reason {letter.reason!r}"
    snap = _snapshot(store)
    assert _sql_rows(snap) == {"tracklets": 6, "embeddings": 6, "identities": 3, "sightings": 6}
    _assert_sightings(snap.sightings, _expected([scene[:3], scene[3:]]))
    assert queue.pending_count(stream, "matcher") == 0 and queue.lag(stream, "matcher") == 0


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_same_input_gives_same_identities(queue: Queue, make_store, names, batch_size: int) -> None:
    # Five people in three cameras, then someone in a fourth who resembles two of them (cosine about 0.76 and
    # 0.66, both above the threshold), all in a shuffled order.
    scene = _scene(n_people=5, cameras=("A", "B", "C"), seed=17)
    lookalike = scene[0].embedding * 0.75 + scene[1].embedding * 0.65
    scene.append(_embedding("D", 1, 400.0, lookalike))
    order = np.random.default_rng(3).permutation(len(scene))
    scene = [scene[i] for i in order]
    runs = []
    for run in range(2):
        store, _ = make_store()
        stream = names(f"embeddings-{run}")
        _publish(queue, stream, scene)
        assert _run_matcher(queue, store, _restoring(store), stream, batch_size=batch_size) == len(scene)
        runs.append(_snapshot(store))
    assert runs[0] == runs[1]
    batches = [scene[i : i + batch_size] for i in range(0, len(scene), batch_size)]
    _assert_sightings(runs[0].sightings, _expected(batches))
    assert runs[0].counts["sightings"] == len(scene)


# ----------------------------------------------------------------------------------------------------
# 3. A consumer killed mid-message


def _doomed_matcher(
    queue: Queue, url: str, schema: str | None, stream: str, hook: str, reached, consumer: str
) -> None:
    """Child process: a matcher worker that hangs at ``hook`` (a Session event) of its first commit."""
    store = open_store(url, schema=schema)

    def hang(session: Session) -> None:
        reached.set()
        time.sleep(600)

    sa.event.listen(Session, hook, hang)
    run_matcher_worker(
        queue,
        store,
        _restoring(store),
        stream=stream,
        consumer=consumer,
        batch_size=3,
        block_ms=100,
        **WORKER_TIMING,
    )


@pytest.fixture
def shared_queue(queue_kind: str, broker: LocalBroker) -> Iterator[Queue]:
    """A queue of the parametrized kind that a spawned child process can use too."""
    q: Queue = (
        broker.queue(**QUEUE) if queue_kind == "local" else RedisQueue(REDIS_URL, retry_for_s=5.0, **QUEUE)
    )
    yield q
    q.close()


@pytest.mark.parametrize("hook", ["before_commit", "after_commit"])
def test_consumer_killed_mid_message_is_completed_by_another(
    shared_queue: Queue, make_store, names, hook: str
) -> None:
    queue = shared_queue
    store, target = make_store()
    stream = names("embeddings")
    scene = _scene(seed=23)
    expected = _expected([scene[:3], scene[3:]])
    _publish(queue, stream, scene)

    ctx = multiprocessing.get_context("spawn")
    reached = ctx.Event()
    child = ctx.Process(
        target=_doomed_matcher, args=(queue, target.url, target.schema, stream, hook, reached, "doomed")
    )
    child.start()
    try:
        assert reached.wait(60), f"the child never reached {hook} (exit code {child.exitcode})"
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-message: consumed, not acknowledged
        child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert queue.pending_count(stream, "matcher") == 3  # its first batch
    killed = _snapshot(store)
    if hook == "before_commit":
        assert _sql_rows(killed) == EMPTY_SQL
    else:
        _assert_sightings(killed.sightings, {e.key: expected[e.key] for e in scene[:3]})

    # A starting matcher takes over every pending message before anything new (one matcher per deployment:
    # what is pending belongs to a dead predecessor), so the batches are decided in the original order.
    assigned = _run_matcher(queue, store, _restoring(store), stream, consumer="survivor")

    assert assigned == (len(scene) if hook == "before_commit" else 3)
    after = _snapshot(store)
    assert _sql_rows(after) == {"tracklets": 6, "embeddings": 6, "identities": 3, "sightings": 6}
    _assert_sightings(after.sightings, expected)
    assert queue.pending_count(stream, "matcher") == 0 and queue.lag(stream, "matcher") == 0
    assert queue.dead_letters(stream) == []


# ----------------------------------------------------------------------------------------------------
# 4. Pictures and boxes with the embedding; forgotten and pruned people (issue 11)

DAY = 86_400.0


def _jpeg(seed: int, size: tuple[int, int] = (32, 16)) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def _dressed(e: TrackletEmbedding, seed: int = 0) -> TrackletEmbedding:
    """``e`` with per-frame boxes (every other frame of its span) and 2 crops + 1 attention picture."""
    frames = np.arange(e.first_frame, e.last_frame + 1, 2, dtype=np.int64)
    boxes = np.stack([frames * 0.5, frames * 0.25, frames * 0.5 + 60, frames * 0.25 + 160], axis=1)
    pictures = tuple(
        TrackletPicture(kind, rank, int(frames[rank]), 16, 32, _jpeg(seed * 10 + k))
        for k, (kind, rank) in enumerate([("crop", 0), ("crop", 1), ("attention", 0)])
    )
    return replace(e, track_frames=frames, track_boxes=boxes.astype(np.float32), pictures=pictures)


def _assert_dressed_in_sql(
    store: Store, scene: Sequence[TrackletEmbedding], session_key: str = SESSION
) -> None:
    """Every tracklet of ``scene`` has exactly its boxes and pictures in SQL, bit for bit."""
    t = TrackletRow
    with store.session(readonly=True) as s:
        for e in scene:
            tid = s.execute(
                sa.select(t.id).where(
                    t.camera_id == e.camera_id,
                    t.track_id == e.track_id,
                    t.chunk == e.chunk,
                    t.session_key == session_key,
                )
            ).scalar_one()
            stored = repo.boxes_of_tracklet(s, tid)
            assert stored is not None, e.key
            np.testing.assert_array_equal(stored.frames, e.track_frames)
            np.testing.assert_array_equal(stored.boxes, e.track_boxes)
            got = {
                (p.kind, p.rank): (p.frame_index, p.width, p.height, p.jpeg)
                for p in repo.pictures_of_tracklet(s, tid)
            }
            assert got == {(p.kind, p.rank): (p.frame_index, p.width, p.height, p.jpeg) for p in e.pictures}


def test_pictures_and_boxes_land_in_sql_with_the_embedding(queue: Queue, make_store, names) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    scene = [_dressed(e, i) for i, e in enumerate(_scene(seed=41))]
    bare = _embedding("C", 99, 300.0, _people(1, 5)[0])  # a producer that sends neither
    _publish(queue, stream, [*scene, bare])
    assert _run_matcher(queue, store, _restoring(store), stream) == len(scene) + 1
    counts = _snapshot(store).counts
    assert (counts["tracklets"], counts["embeddings"]) == (7, 7)
    assert (counts["tracklet_boxes"], counts["tracklet_pictures"]) == (6, 18)
    _assert_dressed_in_sql(store, scene)
    _publish(queue, stream, scene[:2])  # redelivered: nothing changes
    assert _run_matcher(queue, store, _restoring(store), stream, consumer="matcher-2") == 0
    assert _snapshot(store).counts == counts


def test_a_rolled_back_transaction_leaves_no_pictures_or_boxes(queue: Queue, make_store, names) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    scene = [_dressed(e, i) for i, e in enumerate(_scene(seed=43))]
    _publish(queue, stream, scene)
    faulty = _FaultyStore(store, "commit raises")
    after_failure: list[dict[str, int]] = []

    def make() -> Matcher:
        if faulty.failures == 1 and not after_failure:
            after_failure.append(_snapshot(store).counts)
        return _restore(faulty)

    assert _run_matcher(queue, faulty, make, stream) == len(scene)
    assert faulty.failures == 1
    [rolled_back] = after_failure
    assert {
        k: rolled_back[k] for k in ("tracklets", "embeddings", "tracklet_pictures", "tracklet_boxes")
    } == {
        "tracklets": 0,
        "embeddings": 0,
        "tracklet_pictures": 0,
        "tracklet_boxes": 0,
    }
    _assert_dressed_in_sql(store, scene)


@contextmanager
def _serving(queue: Queue, store, make: Callable[[], Matcher], stream: str, **kw) -> Iterator[None]:
    """The matcher worker serving ``stream`` in a thread (no drain) for the duration of the block."""
    kw = {"consumer": "matcher-1", "block_ms": 50, "retry_s": 0.05, "batch_size": 3, **WORKER_TIMING, **kw}
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            run_matcher_worker(queue, store, make, stream=stream, stop=stop, **kw)
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the worker did not stop"
    if errors:
        raise errors[0]


def _sighting_when_stored(store: Store, key: tuple[str, int, int], timeout: float = WORKER_TIMEOUT_S) -> int:
    """Wait until tracklet ``key`` has a sighting in SQL; return its identity."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _snapshot(store).sightings.get(key)
        if found is not None:
            return found[0]
        time.sleep(0.05)
    pytest.fail(f"tracklet {key} was not decided within {timeout:g}s")


@pytest.mark.parametrize("how", ["polled", "refused at commit"])
def test_a_person_forgotten_while_the_matcher_runs_is_never_matched_again(
    queue: Queue, make_store, names, how: str
) -> None:
    """Another process forgets identity X while the worker runs: a later tracklet of the same person gets a
    new identity, never X. "polled": the worker reads the retired id and drops it from its gallery before
    deciding (no rebuild); "refused at commit": it does not look (a long poll interval), assigns X, the store
    refuses it and the worker decides again from SQL (one rebuild), acknowledging nothing in between."""
    store, _ = make_store()
    stream = names("embeddings")
    scene = _scene(seed=47)
    builds = 0

    def make() -> Matcher:
        nonlocal builds
        builds += 1
        return _restore(store)

    poll = 0.05 if how == "polled" else 1e9
    with _serving(queue, store, make, stream, retired_poll_s=poll):
        _publish(queue, stream, scene)
        x = _sighting_when_stored(store, scene[3].key)  # person 1 in camera B
        assert x == _sighting_when_stored(store, scene[0].key) == 1
        with store.session() as s:
            report = repo.forget_identity(s, x)
            s.commit()
        assert len(report.tracklet_ids) == 2
        time.sleep(0.3)  # several poll intervals
        later = _embedding("C", 77, 400.0, scene[0].embedding)  # person 1 again, as alike as can be
        _publish(queue, stream, [later])
        got = _sighting_when_stored(store, later.key)
    assert got != x and got == 4, "a new identity after the largest ever used (3)"
    assert builds == (1 if how == "polled" else 2)
    snap = _snapshot(store)
    assert sorted(i.identity_id for i in snap.identities) == [2, 3, 4]
    assert queue.pending_count(stream, "matcher") == 0 and queue.dead_letters(stream) == []
    with store.session(readonly=True) as s:
        assert repo.is_retired(s, x) and repo.timeline(s, x) == []


def test_retention_prunes_by_footage_time_and_the_gallery_forgets_the_pruned(
    queue: Queue, make_store, names
) -> None:
    """retention.days 1: when the decisions reach footage three days later, the old scene is deleted; the
    person seen again keeps their identity (with only the new sighting), the others are retired, and one of
    them coming back later gets a new identity."""
    store, _ = make_store()
    stream = names("embeddings")
    scene = [
        _dressed(e, i) for i, e in enumerate(_scene(seed=53))
    ]  # people 1..3 in A then B, at T0 + 0..60 s
    people = [e.embedding for e in scene[:3]]
    back = [
        _dressed(_embedding("C", 70, 3 * DAY, people[0]), 70),  # person 1, three days later
        _dressed(_embedding("D", 71, 3 * DAY + 100, people[0]), 71),  # person 1 again
        _dressed(_embedding("D", 72, 3 * DAY + 200, people[1]), 72),  # person 2, whose identity was pruned
    ]
    _publish(queue, stream, [*scene, *back])
    assigned = _run_matcher(
        queue, store, _restoring(store), stream, batch_size=1, retention_days=1.0, prune_every_s=600.0
    )
    assert assigned == len(scene) + len(back)
    snap = _snapshot(store)
    assert sorted(snap.sightings) == sorted(e.key for e in back), "the old scene was deleted"
    assert [snap.sightings[e.key][0] for e in back] == [1, 1, 4]
    assert snap.counts["tracklet_pictures"] == 3 * len(back) and snap.counts["tracklet_boxes"] == len(back)
    assert snap.counts["embeddings"] == len(back)
    with store.session(readonly=True) as s:
        assert [repo.is_retired(s, i) for i in (1, 2, 3, 4)] == [False, True, True, False]
        assert repo.max_identity_id(s) == 4


def test_retention_needs_a_positive_period(queue: Queue, make_store, names) -> None:
    store, _ = make_store()
    with pytest.raises(ValueError, match="prune_every_s"):
        _run_matcher(queue, store, _restoring(store), names("embeddings"), retention_days=1.0, timeout=5)


def test_a_centring_matcher_stores_embeddings_as_they_came_and_restores_its_camera_means(
    queue: Queue, make_store, names
) -> None:
    store, _ = make_store()
    stream = names("embeddings")
    prior = _people(1, 5)[0] * 0.3
    cast = _people(1, 6)[0]  # camera B's colour cast: every B embedding leans this way
    scene = _scene(seed=4)
    scene = scene[:3] + [replace(e, embedding=_unit(e.embedding + 0.8 * cast)) for e in scene[3:]]

    def restoring() -> Matcher:
        d = build.DEFAULTS
        return restore_matcher(
            store,
            topology=Topology(),
            threshold=build.THRESHOLD,
            model=MODEL,
            max_prototypes=d.max_prototypes,
            prior=prior,
            prior_weight=2.0,
        )

    _publish(queue, stream, scene)
    assert _run_matcher(queue, store, restoring, stream) == len(scene)
    # what the pure matcher decides with the same centring, one camera (batch of 3) at a time
    pure = build.matcher(build.gallery(), model=MODEL, centering=CameraCentering(prior, prior_weight=2.0))
    want = {}
    for batch in (scene[:3], scene[3:]):
        for a in pure.assign_by_closing_time(batch, window_s=build.DEFAULTS.window_s):
            want[a.key] = (a.identity_id, a.similarity)
    _assert_sightings(_snapshot(store).sightings, want)
    assert {i for i, _ in want.values()} == {1, 2, 3}, "centred, each person of B finds themself in A"
    with store.session(readonly=True) as s:
        stored = {(g.camera_id, g.track_id): g.vector for g in repo.load_gallery(s, MODEL)}
    for e in scene:
        assert np.allclose(stored[(e.camera_id, e.track_id)], e.embedding, atol=1e-6), "kept as it came"
    # a restart rebuilds the camera means from every stored embedding
    again = restoring()
    assert again.centering is not None
    for cam, members in (("A", scene[:3]), ("B", scene[3:])):
        units = np.stack([_unit(e.embedding) for e in members])
        assert again.centering.count(cam) == 3
        assert np.allclose(again.centering.mean(cam), (2.0 * prior + units.sum(0)) / 5.0, atol=1e-6)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)
