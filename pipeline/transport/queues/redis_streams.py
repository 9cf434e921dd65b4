"""The production queue: :class:`RedisQueue`, a :class:`~pipeline.transport.queues.base.Queue` on Redis Streams
(``XADD MAXLEN ~``, ``XREADGROUP``, ``XACK``, ``XAUTOCLAIM``).

It rides out a Redis restart by retrying with backoff for a bounded time and re-creating groups it had ensured.
``MAXLEN ~`` trims whether or not a group has consumed the entries (see :mod:`pipeline.transport.queues`).
The URL's secrets (password, ``?password=``, ``?token=``...) are scrubbed with :mod:`common.redact` from
``repr``, every log line and every error message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.retry import Retry

from common.redact import redact_text, redact_url, url_secrets
from pipeline.transport.queues.base import (
    DeadLetter,
    Message,
    QueueError,
    check_name,
    check_payload,
    check_positive,
    clip_reason,
    dead_letter_from_fields,
    dead_letter_stream,
    format_id,
    parse_id,
)

__all__ = ["RedisQueue"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class RedisQueue:
    """:class:`Queue` on Redis Streams (Redis >= 6.2 for ``XAUTOCLAIM``; 7 for an exact :meth:`lag`).

    Connection failures and timeouts are retried with jittered exponential backoff for up to ``retry_for_s``
    seconds per operation, then raise :class:`QueueError`; wrong credentials fail at once. Retries make the
    delivery at-least-once on this side too: a retried ``XADD`` may append twice, and entries read by a
    ``XREADGROUP`` whose reply was lost stay pending until :meth:`reclaim`. After a Redis restart without
    persistence, :meth:`consume` and :meth:`reclaim` re-create the groups this object had ensured. The URL's
    password never appears in ``repr``, logs or error messages.

    ``block_ms`` of :meth:`consume` is capped one second below ``socket_timeout`` so a quiet stream does not
    look like a dead server.
    """

    def __init__(
        self,
        url: str,
        *,
        maxlen: int,
        max_deliveries: int,
        socket_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry_for_s: float = 30.0,
    ) -> None:
        self.maxlen = check_positive("maxlen", maxlen)
        self.max_deliveries = check_positive("max_deliveries", max_deliveries)
        if not socket_timeout > 1 or not connect_timeout > 0 or not retry_for_s >= 0:
            raise ValueError(
                f"expected socket_timeout > 1, connect_timeout > 0, retry_for_s >= 0; got "
                f"{socket_timeout}, {connect_timeout}, {retry_for_s}"
            )
        self._url = url
        self._redacted = redact_url(url)
        self._secrets = url_secrets(url)
        self._options = {
            "socket_timeout": socket_timeout,
            "connect_timeout": connect_timeout,
            "retry_for_s": retry_for_s,
        }
        self._retry_for_s = retry_for_s
        self._max_block_ms = int((socket_timeout - 1) * 1000)
        self._groups: set[tuple[str, str]] = set()
        self._closed = False
        # TCP keepalive spots a dead server between commands; a Unix socket connection takes no such option.
        keepalive = {} if url[:5].lower() == "unix:" else {"socket_keepalive": True}
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                **keepalive,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 0),  # _run owns the retry policy, bounded in time
            )
            # redis-py hands URL query parameters it does not know (``?token=``) to the connection class, which
            # would reject them with a TypeError at the first command: build one now (no I/O) to fail here.
            pool = self._client.connection_pool
            pool.connection_class(**pool.connection_kwargs)
        except (ValueError, TypeError) as err:
            raise QueueError(f"invalid Redis URL {self._redacted}: {self._scrub(err)}") from None

    def __repr__(self) -> str:
        return f"RedisQueue({self._redacted!r}, maxlen={self.maxlen}, max_deliveries={self.max_deliveries})"

    def __reduce__(self):
        return (_rebuild_redis, (self._url, self.maxlen, self.max_deliveries, self._options))

    def _scrub(self, err: BaseException | str) -> str:
        """``str(err)`` with every URL in it redacted and this queue's URL secrets masked."""
        return redact_text(str(err), self._secrets)

    def _fail(self, what: str, err: BaseException, detail: str = "") -> QueueError:
        return QueueError(f"{what} on {self._redacted}: {detail}{type(err).__name__}: {self._scrub(err)}")

    def _cause(self, err: BaseException) -> BaseException | None:
        """``err`` to chain, or None when its text holds a secret (tracebacks print the cause)."""
        return err if self._scrub(err) == str(err) else None

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        if self._closed:
            raise QueueError(f"{what}: the queue is closed")
        deadline = time.monotonic() + self._retry_for_s
        delay = 0.05
        warned = False
        while True:
            try:
                return fn()
            except (AuthenticationError, AuthorizationError) as err:
                raise self._fail(what, err, "credentials refused: ") from self._cause(err)
            except (redis.ConnectionError, redis.TimeoutError) as err:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(what, err, f"unreachable for {self._retry_for_s:g}s: ") from self._cause(
                        err
                    )
                if not warned:
                    log.warning(
                        "%s: Redis at %s unreachable (%s); retrying", what, self._redacted, self._scrub(err)
                    )
                    warned = True
                time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
                delay = min(delay * 2, 2.0)
            except redis.RedisError as err:
                raise self._fail(what, err) from self._cause(err)

    def _create_group(self, stream: str, group: str) -> None:
        try:
            self._client.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if not str(err).startswith("BUSYGROUP"):
                raise

    def _recreating_group(self, stream: str, group: str, fn: Callable[[], T]) -> Callable[[], T]:
        """``fn`` that, on NOGROUP for a group this queue ensured (Redis restarted empty), re-creates it once."""

        def call() -> T:
            try:
                return fn()
            except redis.ResponseError as err:
                if not str(err).startswith("NOGROUP") or (stream, group) not in self._groups:
                    raise
                log.warning("group %s of %s vanished (Redis restarted?); re-creating it", group, stream)
                self._create_group(stream, group)
                return fn()

        return call

    def ensure_group(self, stream: str, group: str) -> None:
        check_name("stream", stream)
        check_name("group", group)
        self._run(f"ensure_group {stream}/{group}", lambda: self._create_group(stream, group))
        self._groups.add((stream, group))

    def publish(self, stream: str, payload: bytes) -> str:
        check_name("stream", stream)
        check_payload(payload)
        new_id = self._run(
            f"publish {stream}",
            lambda: self._client.xadd(stream, {"data": payload}, maxlen=self.maxlen, approximate=True),
        )
        return new_id.decode()

    def consume(
        self, stream: str, group: str, consumer: str, *, count: int = 1, block_ms: int = 1000
    ) -> list[Message]:
        check_name("stream", stream)
        check_name("group", group)
        check_name("consumer", consumer)
        check_positive("count", count)
        check_positive("block_ms", block_ms, allow_zero=True)
        block = min(block_ms, self._max_block_ms) or None  # BLOCK 0 would wait forever

        def read():
            return self._client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block)

        reply = self._run(f"consume {stream}/{group}", self._recreating_group(stream, group, read))
        out: list[Message] = []
        for entry_id, fields in _stream_entries(reply):
            msg = Message(entry_id, stream, (fields or {}).get(b"data", b""), 1)
            if not fields or b"data" not in fields:
                self.dead_letter(stream, group, msg, "entry has no 'data' field")
            else:
                out.append(msg)
        return out

    def ack(self, stream: str, group: str, ids: Sequence[str], *, delete: bool = False) -> int:
        check_name("stream", stream)
        check_name("group", group)
        if not isinstance(delete, bool):
            raise ValueError(f"delete: expected a bool, got {delete!r}")
        ids = [format_id(parse_id(i)) for i in ids]
        if not ids:
            return 0
        if not delete:
            return int(self._run(f"ack {stream}/{group}", lambda: self._client.xack(stream, group, *ids)))

        def ack_delete() -> list[Any]:
            # One MULTI: no reader sees an entry acknowledged but still there, or gone but still pending.
            # Retried whole after a lost reply: XACK and XDEL of done ids are no-ops.
            pipe = self._client.pipeline(transaction=True)
            pipe.xack(stream, group, *ids)
            pipe.xdel(stream, *ids)
            return pipe.execute()

        acked, _ = self._run(f"ack+delete {stream}/{group}", ack_delete)
        return int(acked)

    def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 10
    ) -> list[Message]:
        check_name("stream", stream)
        check_name("group", group)
        check_name("consumer", consumer)
        check_positive("min_idle_ms", min_idle_ms, allow_zero=True)
        check_positive("count", count)
        what = f"reclaim {stream}/{group}"
        claimed: list[tuple[str, bytes]] = []
        cursor = "0-0"
        while len(claimed) < count:
            start = cursor

            def claim(start: str = start) -> Any:
                return self._client.xautoclaim(
                    stream, group, consumer, min_idle_ms, start_id=start, count=count - len(claimed)
                )

            reply = self._run(what, self._recreating_group(stream, group, claim))
            cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            for entry_id, fields in reply[1]:
                entry_id = entry_id.decode()
                if fields is None:  # Redis 6.2: trimmed while pending
                    log.warning("%s %s was trimmed before it was acknowledged; dropping it", stream, entry_id)
                    self._run(what, lambda entry_id=entry_id: self._client.xack(stream, group, entry_id))
                else:
                    claimed.append((entry_id, fields.get(b"data", b"")))
            for gone in reply[2] if len(reply) > 2 else []:
                log.warning("%s %s was trimmed before it was acknowledged; it is lost", stream, gone)
            if cursor == "0-0":
                break
        if not claimed:
            return []

        def counts() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for entry_id, _ in claimed:
                pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1, consumername=consumer)
            return pipe.execute()

        out: list[Message] = []
        for (entry_id, payload), rows in zip(claimed, self._run(what, counts), strict=True):
            if not rows:
                continue  # another consumer claimed it in between
            msg = Message(entry_id, stream, payload, int(rows[0]["times_delivered"]))
            if self._not_poison(group, msg):
                out.append(msg)
        return out

    def recover(self, stream: str, group: str, consumer: str, *, count: int = 100) -> list[Message]:
        check_name("stream", stream)
        check_name("group", group)
        check_name("consumer", consumer)
        check_positive("count", count)
        what = f"recover {stream}/{group}"

        def pending() -> Any:
            return self._client.xpending_range(
                stream, group, min="-", max="+", count=count, consumername=consumer
            )

        rows = self._run(what, self._recreating_group(stream, group, pending))
        if not rows:
            return []
        times = {r["message_id"].decode(): int(r["times_delivered"]) for r in rows}
        claimed = self._run(
            what, lambda: self._client.xclaim(stream, group, consumer, 0, message_ids=list(times))
        )
        out: list[Message] = []
        for entry_id, fields in claimed:
            entry_id = entry_id.decode()
            if not fields:
                log.warning("%s %s was trimmed before it was acknowledged; it is lost", stream, entry_id)
                self._run(what, lambda entry_id=entry_id: self._client.xack(stream, group, entry_id))
                continue
            msg = Message(entry_id, stream, fields.get(b"data", b""), times.get(entry_id, 0) + 1)
            if self._not_poison(group, msg):
                out.append(msg)
        return out

    def _not_poison(self, group: str, msg: Message) -> bool:
        """False (and moved to the dead-letter stream) for a message handed out more than max_deliveries times."""
        if msg.deliveries <= self.max_deliveries:
            return True
        reason = f"delivered {msg.deliveries} times, more than max_deliveries={self.max_deliveries}"
        self.dead_letter(msg.stream, group, msg, reason)
        return False

    def dead_letter(self, stream: str, group: str, message: Message, reason: str) -> None:
        check_name("stream", stream)
        check_name("group", group)
        parse_id(message.id)
        fields = {
            "data": message.payload,
            "id": message.id,
            "stream": stream,
            "group": group,
            "reason": clip_reason(reason),
            "deliveries": int(message.deliveries),
        }

        def move() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.xadd(dead_letter_stream(stream), fields, maxlen=self.maxlen, approximate=True)
            pipe.xack(stream, group, message.id)
            return pipe.execute()

        self._run(f"dead_letter {stream}/{group}", move)
        log.warning("dead-lettered %s %s: %s", stream, message.id, clip_reason(reason))

    def dead_letters(self, stream: str, *, count: int = 100) -> list[DeadLetter]:
        check_name("stream", stream)
        check_positive("count", count)
        rows = self._run(
            f"dead_letters {stream}", lambda: self._client.xrange(dead_letter_stream(stream), count=count)
        )
        return [dead_letter_from_fields(i.decode(), f) for i, f in rows]

    def pending_count(self, stream: str, group: str) -> int:
        check_name("stream", stream)
        check_name("group", group)
        return int(
            self._run(f"pending_count {stream}/{group}", lambda: self._client.xpending(stream, group))[
                "pending"
            ]
        )

    def lag(self, stream: str, group: str) -> int:
        check_name("stream", stream)
        check_name("group", group)

        def info() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
            return pipe.execute()

        groups, length = self._run(f"lag {stream}/{group}", info)
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == group:
                # Redis counts entries trimmed before the group read them in "lag"; none can exceed XLEN.
                # Without a known lag (Redis 6.2, or after XDEL) XLEN is the upper bound we report.
                undelivered = g.get("lag")
                undelivered = length if undelivered is None else min(int(undelivered), length)
                return undelivered + int(g["pending"])
        raise QueueError(f"NOGROUP lag: no consumer group {group!r} on stream {stream!r}")

    def length(self, stream: str) -> int:
        check_name("stream", stream)
        return int(self._run(f"length {stream}", lambda: self._client.xlen(stream)))

    def close(self) -> None:
        self._closed = True
        self._client.close()


def _rebuild_redis(url: str, maxlen: int, max_deliveries: int, options: dict[str, float]) -> RedisQueue:
    return RedisQueue(url, maxlen=maxlen, max_deliveries=max_deliveries, **options)


def _stream_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes] | None]]:
    """Entries of a one-stream XREADGROUP reply, RESP2 (list of pairs) or RESP3 (map)."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out = []
    for _, entries in pairs:
        if isinstance(entries, list) and len(entries) == 1 and isinstance(entries[0], list):
            entries = entries[0]  # RESP3 wraps the entry list once more
        out.extend((i.decode() if isinstance(i, bytes) else str(i), f) for i, f in entries)
    return out
