"""Message queues between pipeline stages: one interface, Redis Streams or an embedded broker behind it.

Semantics (both implementations): a *stream* is an append-only log of entries with ids ``"<ms>-<seq>"``; a
*consumer group* reads it once as a whole, handing each new entry to exactly one of its named consumers and
remembering it as *pending* for that consumer until it is acknowledged. Delivery is at-least-once:

1. every consumer calls :meth:`Queue.ensure_group` first (idempotent);
2. :meth:`Queue.consume` hands out new entries (``deliveries == 1``);
3. the consumer commits its result (SQL, or a downstream :meth:`Queue.publish`) **then** :meth:`Queue.ack`;
4. entries of a crashed consumer stay pending; any consumer takes them over with :meth:`Queue.reclaim` once
   they have been idle ``min_idle_ms`` (``deliveries`` grows by one per hand-out). An entry handed out more
   than ``max_deliveries`` times is a poison message: ``reclaim`` moves it to the dead-letter stream
   ``<stream>:dead`` instead. A consumer that cannot decode a payload calls :meth:`Queue.dead_letter` itself.

Handlers must therefore be idempotent on the message's natural key. Payloads are opaque bytes (see
:mod:`pipeline.transport.wire`). Every queue-level failure raises :class:`QueueError`; bad arguments raise ``ValueError``.

Implementations:

- :class:`RedisQueue` for production (``XADD MAXLEN ~``, ``XREADGROUP``, ``XACK``, ``XAUTOCLAIM``); it rides out a
  Redis restart by retrying with backoff for a bounded time and re-creating groups it had ensured.
- :class:`LocalQueue`, the embedded default when no Redis URL is given. In one process it is a thread-safe
  in-memory object; across processes the parent calls :func:`start_local_broker`, which serves one broker from a
  ``multiprocessing`` manager process (spawn-safe, Unix socket, random authkey), and children call
  :meth:`LocalQueue.connect` with its ``address`` and ``authkey`` (or receive a pickled ``LocalQueue``).

One deliberate difference: Redis ``MAXLEN ~`` trims the oldest entries whether or not a group has consumed
them (Redis 7 has no "acknowledged only" trim), so a producer more than ``maxlen`` entries ahead of its
consumers loses entries there. ``LocalQueue`` trims only entries that every group has acknowledged, so its
streams exceed ``maxlen`` while consumers lag and never drop unconsumed work.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing import ProcessError, get_context, parent_process
from multiprocessing.managers import BaseManager, BaseProxy, RemoteError
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.retry import Retry

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "BrokerEndpoint",
    "DeadLetter",
    "LocalBroker",
    "LocalQueue",
    "Message",
    "Queue",
    "QueueError",
    "RedisQueue",
    "dead_letter_stream",
    "open_queue",
    "redact_url",
    "start_local_broker",
]

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ":dead"
_DEFAULT_MAXLEN = 10_000
_DEFAULT_MAX_DELIVERIES = 5
_REASON_MAX_CHARS = 500

T = TypeVar("T")


class QueueError(RuntimeError):
    """The queue backend failed: unreachable past the retry budget, a missing group, a wrong key type..."""


@dataclass(frozen=True)
class Message:
    """One entry handed to a consumer. ``deliveries`` counts hand-outs to this group, 1 on the first."""

    id: str
    stream: str
    payload: bytes = field(repr=False)
    deliveries: int


@dataclass(frozen=True)
class DeadLetter:
    """An entry of ``<stream>:dead``: the original ``payload`` and id, who gave up on it, and why."""

    id: str
    stream: str
    original_id: str
    group: str
    reason: str
    deliveries: int
    payload: bytes = field(repr=False)


def dead_letter_stream(stream: str) -> str:
    """Name of the dead-letter stream of ``stream``."""
    return stream + DEAD_LETTER_SUFFIX


@runtime_checkable
class Queue(Protocol):
    """The contract every queue implementation meets (see the module docstring for the delivery model)."""

    def ensure_group(self, stream: str, group: str) -> None:
        """Create ``stream`` (empty) and ``group`` (reading from the stream's first entry) where missing.

        An existing group is fine; any other failure (e.g. the key holds something that is not a stream)
        raises :class:`QueueError`.
        """
        ...

    def publish(self, stream: str, payload: bytes) -> str:
        """Append ``payload`` to ``stream`` (created if missing), trimming it towards ``maxlen``; return the id."""
        ...

    def consume(
        self, stream: str, group: str, consumer: str, *, count: int = 1, block_ms: int = 1000
    ) -> list[Message]:
        """Up to ``count`` entries never delivered to ``group``, now pending for ``consumer``.

        Waits at most ``block_ms`` (0: do not wait) for the first one and returns ``[]`` if none came.
        A missing group raises :class:`QueueError`.
        """
        ...

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        """Acknowledge ``ids`` for ``group``; return how many were pending. Unknown ids are ignored."""
        ...

    def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 10
    ) -> list[Message]:
        """Take over up to ``count`` entries pending (for any consumer) for at least ``min_idle_ms``.

        Each claimed entry's ``deliveries`` grows by one; one that then exceeds ``max_deliveries`` goes to the
        dead-letter stream and is acknowledged instead of being returned.
        """
        ...

    def recover(self, stream: str, group: str, consumer: str, *, count: int = 100) -> list[Message]:
        """Entries still pending for ``consumer`` itself, handed out again (``deliveries`` + 1): what a
        consumer restarted under the same name left unfinished. Poison messages go to the dead-letter stream
        as in :meth:`reclaim`."""
        ...

    def dead_letter(self, stream: str, group: str, message: Message, reason: str) -> None:
        """Record ``message`` in ``<stream>:dead`` with ``reason``, then acknowledge it for ``group``."""
        ...

    def dead_letters(self, stream: str, *, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` entries of ``<stream>:dead`` (``[]`` if there are none)."""
        ...

    def pending_count(self, stream: str, group: str) -> int:
        """Entries delivered to ``group`` and not yet acknowledged. A missing group raises QueueError."""
        ...

    def lag(self, stream: str, group: str) -> int:
        """Entries ``group`` has still to finish: not yet delivered plus pending. Missing group: QueueError."""
        ...

    def length(self, stream: str) -> int:
        """Entries currently held in ``stream`` (0 if it does not exist)."""
        ...

    def close(self) -> None:
        """Release connections; the queue is unusable afterwards. Idempotent."""
        ...


# ------------------------------------------------------------------------------------------ shared checks


def _name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: expected a non-empty str, got {value!r}")
    return value


def _positive(what: str, value: object, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{what}: expected an int {bound}, got {value!r}")
    return value


def _parse_id(value: object) -> tuple[int, int]:
    """``"<ms>-<seq>"`` -> (ms, seq); ValueError otherwise."""
    if isinstance(value, str):
        ms, sep, seq = value.partition("-")
        if sep and ms.isdigit() and seq.isdigit():
            return int(ms), int(seq)
    raise ValueError(f"message id: expected '<ms>-<seq>', got {value!r}")


def _format_id(i: tuple[int, int]) -> str:
    return f"{i[0]}-{i[1]}"


def _reason(reason: object) -> str:
    return str(reason)[:_REASON_MAX_CHARS]


def _check_payload(payload: object) -> bytes:
    if not isinstance(payload, bytes):
        raise ValueError(f"payload: expected bytes, got {type(payload).__name__}")
    return payload


# ---------------------------------------------------------------------------------------- embedded broker


class _Pending:
    __slots__ = ("consumer", "delivered_at", "deliveries")

    def __init__(self, consumer: str, delivered_at: float) -> None:
        self.consumer = consumer
        self.delivered_at = delivered_at
        self.deliveries = 1


class _Group:
    __slots__ = ("last_delivered", "pending")

    def __init__(self) -> None:
        self.last_delivered: tuple[int, int] = (0, 0)
        # Ordered by id: consume only ever inserts ids above every earlier one, reclaim updates in place.
        self.pending: dict[tuple[int, int], _Pending] = {}


class _Stream:
    __slots__ = ("ids", "entries", "last_id", "groups", "maxlen", "arrived")

    def __init__(self, lock: threading.Lock) -> None:
        self.ids: list[tuple[int, int]] = []
        self.entries: dict[tuple[int, int], dict[str, Any]] = {}
        self.last_id: tuple[int, int] = (0, 0)
        self.groups: dict[str, _Group] = {}
        self.maxlen: int | None = None
        self.arrived = threading.Condition(lock)


class _Broker:
    """All streams of a :class:`LocalQueue`, guarded by one lock. Methods take and return plain picklable values
    because, across processes, they are called through a manager proxy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[str, _Stream] = {}

    # Called with the lock held.
    def _stream(self, name: str) -> _Stream:
        s = self._streams.get(name)
        if s is None:
            s = self._streams[name] = _Stream(self._lock)
        return s

    def _group(self, stream: str, group: str, op: str) -> tuple[_Stream, _Group]:
        s = self._streams.get(stream)
        g = None if s is None else s.groups.get(group)
        if s is None or g is None:
            raise QueueError(f"NOGROUP {op}: no stream {stream!r} or no consumer group {group!r} on it")
        return s, g

    def _append(self, name: str, fields: dict[str, Any], maxlen: int) -> str:
        s = self._stream(name)
        ms = int(time.time() * 1000)
        new = (ms, 0) if ms > s.last_id[0] else (s.last_id[0], s.last_id[1] + 1)
        s.last_id = new
        s.ids.append(new)
        s.entries[new] = fields
        s.maxlen = maxlen
        self._trim(s)
        s.arrived.notify_all()
        return _format_id(new)

    @staticmethod
    def _trim(s: _Stream) -> None:
        """Drop the oldest entries beyond ``maxlen`` that no group still owes (undelivered or pending)."""
        excess = len(s.ids) - (s.maxlen if s.maxlen is not None else len(s.ids))
        if excess <= 0:
            return
        if not s.groups:
            for i in s.ids[:excess]:
                del s.entries[i]
            del s.ids[:excess]
            return
        horizon = min(g.last_delivered for g in s.groups.values())
        kept: list[tuple[int, int]] = []
        for k, i in enumerate(s.ids):
            if excess == 0 or i > horizon:
                kept.extend(s.ids[k:])
                break
            if any(i in g.pending for g in s.groups.values()):
                kept.append(i)
            else:
                del s.entries[i]
                excess -= 1
        s.ids = kept

    def _dead_letter(
        self,
        stream: str,
        group: str,
        i: tuple[int, int],
        payload: bytes,
        deliveries: int,
        reason: str,
        maxlen: int,
    ) -> None:
        fields = {
            "data": payload,
            "id": _format_id(i),
            "stream": stream,
            "group": group,
            "reason": reason,
            "deliveries": deliveries,
        }
        self._append(dead_letter_stream(stream), fields, maxlen)
        s = self._streams.get(stream)
        g = None if s is None else s.groups.get(group)
        if s is not None and g is not None and g.pending.pop(i, None) is not None:
            self._trim(s)

    # Public broker operations (also the manager proxy's exposed methods).
    def ensure_group(self, stream: str, group: str) -> None:
        with self._lock:
            self._stream(stream).groups.setdefault(group, _Group())

    def publish(self, stream: str, payload: bytes, maxlen: int) -> str:
        with self._lock:
            return self._append(stream, {"data": payload}, maxlen)

    def consume(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[tuple[str, bytes, int]]:
        deadline = time.monotonic() + block_ms / 1000
        with self._lock:
            while True:
                s, g = self._group(stream, group, "consume")
                start = bisect.bisect_right(s.ids, g.last_delivered)
                fresh = s.ids[start : start + count]
                if fresh:
                    now = time.monotonic()
                    for i in fresh:
                        g.pending[i] = _Pending(consumer, now)
                    g.last_delivered = fresh[-1]
                    return [(_format_id(i), s.entries[i]["data"], 1) for i in fresh]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                s.arrived.wait(remaining)

    def ack(self, stream: str, group: str, ids: list[tuple[int, int]]) -> int:
        with self._lock:
            s = self._streams.get(stream)
            g = None if s is None else s.groups.get(group)
            if s is None or g is None:
                return 0  # as XACK: nothing pending there
            done = sum(g.pending.pop(i, None) is not None for i in ids)
            if done:
                self._trim(s)
            return done

    def reclaim(
        self,
        stream: str,
        group: str,
        consumer: str,
        min_idle_ms: int,
        count: int,
        max_deliveries: int,
        maxlen: int,
        owner: str | None = None,
    ) -> tuple[list[tuple[str, bytes, int]], list[tuple[str, int]]]:
        with self._lock:
            s, g = self._group(stream, group, "reclaim")
            now = time.monotonic()
            claimed: list[tuple[tuple[int, int], _Pending]] = []
            for i, p in g.pending.items():
                if len(claimed) == count:
                    break
                if owner is not None and p.consumer != owner:
                    continue
                if (now - p.delivered_at) * 1000 >= min_idle_ms:
                    claimed.append((i, p))
            out: list[tuple[str, bytes, int]] = []
            dead: list[tuple[str, int]] = []
            for i, p in claimed:
                p.consumer, p.delivered_at, p.deliveries = consumer, now, p.deliveries + 1
                if p.deliveries > max_deliveries:
                    reason = f"delivered {p.deliveries} times, more than max_deliveries={max_deliveries}"
                    self._dead_letter(stream, group, i, s.entries[i]["data"], p.deliveries, reason, maxlen)
                    dead.append((_format_id(i), p.deliveries))
                else:
                    out.append((_format_id(i), s.entries[i]["data"], p.deliveries))
            return out, dead

    def dead_letter(
        self,
        stream: str,
        group: str,
        i: tuple[int, int],
        payload: bytes,
        deliveries: int,
        reason: str,
        maxlen: int,
    ) -> None:
        with self._lock:
            self._dead_letter(stream, group, i, payload, deliveries, reason, maxlen)

    def dead_letters(self, stream: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            s = self._streams.get(dead_letter_stream(stream))
            if s is None:
                return []
            return [(_format_id(i), dict(s.entries[i])) for i in s.ids[:count]]

    def pending_count(self, stream: str, group: str) -> int:
        with self._lock:
            return len(self._group(stream, group, "pending_count")[1].pending)

    def lag(self, stream: str, group: str) -> int:
        with self._lock:
            s, g = self._group(stream, group, "lag")
            return len(s.ids) - bisect.bisect_right(s.ids, g.last_delivered) + len(g.pending)

    def length(self, stream: str) -> int:
        with self._lock:
            s = self._streams.get(stream)
            return 0 if s is None else len(s.ids)


_BROKER_METHODS = (
    "ensure_group",
    "publish",
    "consume",
    "ack",
    "reclaim",
    "dead_letter",
    "dead_letters",
    "pending_count",
    "lag",
    "length",
)


class _BrokerProxy(BaseProxy):
    _exposed_ = _BROKER_METHODS


_SERVED_BROKER: _Broker | None = None


def _served_broker() -> _Broker:
    """The one broker of a manager server process (each client's ``broker()`` call gets a proxy to it)."""
    global _SERVED_BROKER
    if _SERVED_BROKER is None:
        _SERVED_BROKER = _Broker()
    return _SERVED_BROKER


def _exit_with_parent(socket_dir: str) -> None:
    """Manager-server initializer: the broker process must not outlive the process that started it."""
    parent = parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        shutil.rmtree(socket_dir, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, name="broker-parent-watch", daemon=True).start()


class _BrokerManager(BaseManager):
    pass


_BrokerManager.register("broker", callable=_served_broker, proxytype=_BrokerProxy)

_BROKER_DOWN = (OSError, EOFError, ProcessError, RemoteError)


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where a child process finds the local broker: picklable, the authkey kept out of ``repr``."""

    address: Any
    authkey: bytes = field(repr=False)


class LocalQueue:
    """In-memory :class:`Queue` with Redis Streams semantics (see the module docstring).

    ``LocalQueue()`` holds its own state in this process (share the instance between threads).
    ``LocalQueue.connect(address, authkey)`` talks to the broker of :func:`start_local_broker`, from any process;
    a connected queue can also be pickled to a child process (it reconnects there).
    """

    def __init__(
        self, *, maxlen: int = _DEFAULT_MAXLEN, max_deliveries: int = _DEFAULT_MAX_DELIVERIES
    ) -> None:
        self.maxlen = _positive("maxlen", maxlen)
        self.max_deliveries = _positive("max_deliveries", max_deliveries)
        self._endpoint: BrokerEndpoint | None = None
        self._broker: _Broker | None = _Broker()
        self._proxy: BaseProxy | None = None

    @classmethod
    def connect(
        cls,
        address: Any,
        authkey: bytes,
        *,
        maxlen: int = _DEFAULT_MAXLEN,
        max_deliveries: int = _DEFAULT_MAX_DELIVERIES,
    ) -> LocalQueue:
        """A queue on the broker served at ``address``; raise :class:`QueueError` if it cannot be reached."""
        q = cls(maxlen=maxlen, max_deliveries=max_deliveries)
        q._broker = None
        q._endpoint = BrokerEndpoint(address, bytes(authkey))
        manager = _BrokerManager(address=address, authkey=bytes(authkey))
        try:
            manager.connect()
            q._proxy = manager.broker()
        except _BROKER_DOWN as err:
            raise QueueError(
                f"cannot reach the local broker at {address!r}: {type(err).__name__}: {err}"
            ) from err
        return q

    def __reduce__(self):
        if self._endpoint is None:
            raise TypeError(
                "an in-process LocalQueue cannot cross processes; start_local_broker() and pass its endpoint"
            )
        e = self._endpoint
        return (_reconnect_local, (e.address, e.authkey, self.maxlen, self.max_deliveries))

    def __repr__(self) -> str:
        where = "in-process" if self._endpoint is None else f"broker={self._endpoint.address!r}"
        return f"LocalQueue({where}, maxlen={self.maxlen}, max_deliveries={self.max_deliveries})"

    def _call(self, method: str, *args: Any) -> Any:
        if self._broker is not None:
            return getattr(self._broker, method)(*args)
        if self._proxy is None:
            raise QueueError(f"{method}: the queue is closed")
        try:
            return self._proxy._callmethod(method, args)
        except _BROKER_DOWN as err:
            raise QueueError(f"{method}: local broker unreachable ({type(err).__name__}: {err})") from err

    def ensure_group(self, stream: str, group: str) -> None:
        self._call("ensure_group", _name("stream", stream), _name("group", group))

    def publish(self, stream: str, payload: bytes) -> str:
        return self._call("publish", _name("stream", stream), _check_payload(payload), self.maxlen)

    def consume(
        self, stream: str, group: str, consumer: str, *, count: int = 1, block_ms: int = 1000
    ) -> list[Message]:
        rows = self._call(
            "consume",
            _name("stream", stream),
            _name("group", group),
            _name("consumer", consumer),
            _positive("count", count),
            _positive("block_ms", block_ms, allow_zero=True),
        )
        return [Message(i, stream, payload, n) for i, payload, n in rows]

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        parsed = [_parse_id(i) for i in ids]
        if not parsed:
            return 0
        return self._call("ack", _name("stream", stream), _name("group", group), parsed)

    def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 10
    ) -> list[Message]:
        rows, dead = self._call(
            "reclaim",
            _name("stream", stream),
            _name("group", group),
            _name("consumer", consumer),
            _positive("min_idle_ms", min_idle_ms, allow_zero=True),
            _positive("count", count),
            self.max_deliveries,
            self.maxlen,
        )
        for i, n in dead:
            log.warning("dead-lettered %s %s after %d deliveries (poison message?)", stream, i, n)
        return [Message(i, stream, payload, n) for i, payload, n in rows]

    def recover(self, stream: str, group: str, consumer: str, *, count: int = 100) -> list[Message]:
        rows, dead = self._call(
            "reclaim",
            _name("stream", stream),
            _name("group", group),
            _name("consumer", consumer),
            0,
            _positive("count", count),
            self.max_deliveries,
            self.maxlen,
            consumer,
        )
        for i, n in dead:
            log.warning("dead-lettered %s %s after %d deliveries (poison message?)", stream, i, n)
        return [Message(i, stream, payload, n) for i, payload, n in rows]

    def dead_letter(self, stream: str, group: str, message: Message, reason: str) -> None:
        i = _parse_id(message.id)
        self._call(
            "dead_letter",
            _name("stream", stream),
            _name("group", group),
            i,
            _check_payload(message.payload),
            message.deliveries,
            _reason(reason),
            self.maxlen,
        )
        log.warning("dead-lettered %s %s: %s", stream, message.id, _reason(reason))

    def dead_letters(self, stream: str, *, count: int = 100) -> list[DeadLetter]:
        rows = self._call("dead_letters", _name("stream", stream), _positive("count", count))
        return [_dead_letter_from_fields(i, f) for i, f in rows]

    def pending_count(self, stream: str, group: str) -> int:
        return self._call("pending_count", _name("stream", stream), _name("group", group))

    def lag(self, stream: str, group: str) -> int:
        return self._call("lag", _name("stream", stream), _name("group", group))

    def length(self, stream: str) -> int:
        return self._call("length", _name("stream", stream))

    def close(self) -> None:
        # Dropping the proxy decrefs it at the broker and closes its connections.
        self._broker = None
        self._proxy = None


def _reconnect_local(address: Any, authkey: bytes, maxlen: int, max_deliveries: int) -> LocalQueue:
    return LocalQueue.connect(address, authkey, maxlen=maxlen, max_deliveries=max_deliveries)


def _dead_letter_from_fields(entry_id: str, f: dict[Any, Any]) -> DeadLetter:
    """Build a DeadLetter from an entry's fields (str keys locally, bytes keys and values from Redis)."""

    def get(key: str) -> Any:
        v = f.get(key, f.get(key.encode()))
        return v.decode("utf-8", "replace") if isinstance(v, bytes) and key != "data" else v

    return DeadLetter(
        id=entry_id,
        stream=str(get("stream")),
        original_id=str(get("id")),
        group=str(get("group")),
        reason=str(get("reason")),
        deliveries=int(get("deliveries") or 0),
        payload=bytes(get("data") or b""),
    )


class LocalBroker:
    """The manager process serving one :class:`_Broker` to every :class:`LocalQueue` of a pipeline run.

    Made by :func:`start_local_broker` in the parent. Children need only :attr:`endpoint` (or ``address`` and
    ``authkey``). :meth:`shutdown` stops it, and so does the parent's exit, even a SIGKILL.
    """

    def __init__(self, manager: _BrokerManager, authkey: bytes, socket_dir: str) -> None:
        self._manager = manager
        self._socket_dir = socket_dir
        self.endpoint = BrokerEndpoint(manager.address, authkey)

    @property
    def address(self) -> Any:
        return self.endpoint.address

    @property
    def authkey(self) -> bytes:
        return self.endpoint.authkey

    def queue(
        self, *, maxlen: int = _DEFAULT_MAXLEN, max_deliveries: int = _DEFAULT_MAX_DELIVERIES
    ) -> LocalQueue:
        """A :class:`LocalQueue` connected to this broker."""
        return LocalQueue.connect(self.address, self.authkey, maxlen=maxlen, max_deliveries=max_deliveries)

    def shutdown(self) -> None:
        """Stop the broker process (its streams are lost). Idempotent."""
        self._manager.shutdown()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"LocalBroker(address={self.address!r})"


def start_local_broker() -> LocalBroker:
    """Start the embedded broker in its own (spawned) process.

    It listens on a Unix socket in a fresh private (0700) temporary directory and admits only clients that
    hold its random authkey. Raise :class:`QueueError` if it does not come up.
    """
    authkey = os.urandom(32)
    socket_dir = tempfile.mkdtemp(prefix="reid-broker-")
    manager = _BrokerManager(
        address=os.path.join(socket_dir, "broker.sock"), authkey=authkey, ctx=get_context("spawn")
    )
    try:
        manager.start(initializer=_exit_with_parent, initargs=(socket_dir,))
    except (OSError, EOFError, ProcessError) as err:
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise QueueError(f"could not start the local broker: {type(err).__name__}: {err}") from err
    return LocalBroker(manager, authkey, socket_dir)


# ------------------------------------------------------------------------------------------------- Redis


def _url_secrets(url: str) -> list[str]:
    """The password of ``url`` as written and percent-decoded (userinfo and ``?password=``)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() == "password"]
    except ValueError:
        return []
    return sorted({s for p in found for s in (p, unquote(p)) if s}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``; safe for logs and errors."""
    base, qmark, query = url.partition("?")
    try:
        parts = urlsplit(base)
        password = parts.password
        pairs = parse_qsl(query, keep_blank_values=True)
    except ValueError:
        return "<unparseable URL>"
    if password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        base = base.replace("//" + parts.netloc, f"//{userinfo.split(':', 1)[0]}:***@{hostport}", 1)
    if any(k.lower() == "password" for k, _ in pairs):
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*/")
    return base + qmark + query


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
        maxlen: int = _DEFAULT_MAXLEN,
        max_deliveries: int = _DEFAULT_MAX_DELIVERIES,
        socket_timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry_for_s: float = 30.0,
    ) -> None:
        self.maxlen = _positive("maxlen", maxlen)
        self.max_deliveries = _positive("max_deliveries", max_deliveries)
        if not socket_timeout > 1 or not connect_timeout > 0 or not retry_for_s >= 0:
            raise ValueError(
                f"expected socket_timeout > 1, connect_timeout > 0, retry_for_s >= 0; got "
                f"{socket_timeout}, {connect_timeout}, {retry_for_s}"
            )
        self._url = url
        self._redacted = redact_url(url)
        self._secrets = _url_secrets(url)
        self._options = {
            "socket_timeout": socket_timeout,
            "connect_timeout": connect_timeout,
            "retry_for_s": retry_for_s,
        }
        self._retry_for_s = retry_for_s
        self._max_block_ms = int((socket_timeout - 1) * 1000)
        self._groups: set[tuple[str, str]] = set()
        self._closed = False
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                socket_keepalive=True,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 0),  # _run owns the retry policy, bounded in time
            )
        except ValueError as err:
            raise QueueError(f"invalid Redis URL {self._redacted}: {self._scrub(err)}") from None

    def __repr__(self) -> str:
        return f"RedisQueue({self._redacted!r}, maxlen={self.maxlen}, max_deliveries={self.max_deliveries})"

    def __reduce__(self):
        return (_rebuild_redis, (self._url, self.maxlen, self.max_deliveries, self._options))

    def _scrub(self, err: BaseException | str) -> str:
        text = str(err)
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

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
        _name("stream", stream)
        _name("group", group)
        self._run(f"ensure_group {stream}/{group}", lambda: self._create_group(stream, group))
        self._groups.add((stream, group))

    def publish(self, stream: str, payload: bytes) -> str:
        _name("stream", stream)
        _check_payload(payload)
        new_id = self._run(
            f"publish {stream}",
            lambda: self._client.xadd(stream, {"data": payload}, maxlen=self.maxlen, approximate=True),
        )
        return new_id.decode()

    def consume(
        self, stream: str, group: str, consumer: str, *, count: int = 1, block_ms: int = 1000
    ) -> list[Message]:
        _name("stream", stream)
        _name("group", group)
        _name("consumer", consumer)
        _positive("count", count)
        _positive("block_ms", block_ms, allow_zero=True)
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

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        _name("stream", stream)
        _name("group", group)
        ids = [_format_id(_parse_id(i)) for i in ids]
        if not ids:
            return 0
        return int(self._run(f"ack {stream}/{group}", lambda: self._client.xack(stream, group, *ids)))

    def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 10
    ) -> list[Message]:
        _name("stream", stream)
        _name("group", group)
        _name("consumer", consumer)
        _positive("min_idle_ms", min_idle_ms, allow_zero=True)
        _positive("count", count)
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
        _name("stream", stream)
        _name("group", group)
        _name("consumer", consumer)
        _positive("count", count)
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
        _name("stream", stream)
        _name("group", group)
        _parse_id(message.id)
        fields = {
            "data": message.payload,
            "id": message.id,
            "stream": stream,
            "group": group,
            "reason": _reason(reason),
            "deliveries": int(message.deliveries),
        }

        def move() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.xadd(dead_letter_stream(stream), fields, maxlen=self.maxlen, approximate=True)
            pipe.xack(stream, group, message.id)
            return pipe.execute()

        self._run(f"dead_letter {stream}/{group}", move)
        log.warning("dead-lettered %s %s: %s", stream, message.id, _reason(reason))

    def dead_letters(self, stream: str, *, count: int = 100) -> list[DeadLetter]:
        _name("stream", stream)
        _positive("count", count)
        rows = self._run(
            f"dead_letters {stream}", lambda: self._client.xrange(dead_letter_stream(stream), count=count)
        )
        return [_dead_letter_from_fields(i.decode(), f) for i, f in rows]

    def pending_count(self, stream: str, group: str) -> int:
        _name("stream", stream)
        _name("group", group)
        return int(
            self._run(f"pending_count {stream}/{group}", lambda: self._client.xpending(stream, group))[
                "pending"
            ]
        )

    def lag(self, stream: str, group: str) -> int:
        _name("stream", stream)
        _name("group", group)

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
        _name("stream", stream)
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


# ---------------------------------------------------------------------------------------------- factory


def open_queue(
    redis_url: str | None = None,
    *,
    broker: BrokerEndpoint | None = None,
    maxlen: int = _DEFAULT_MAXLEN,
    max_deliveries: int = _DEFAULT_MAX_DELIVERIES,
    **redis_options: float,
) -> Queue:
    """A :class:`RedisQueue` when ``redis_url`` is given, else a :class:`LocalQueue`: connected to ``broker``
    (from :func:`start_local_broker`, for multi-process runs) or, without one, in this process only.

    ``redis_options`` (``socket_timeout``, ``connect_timeout``, ``retry_for_s``) apply to Redis only.
    """
    if redis_url:
        if broker is not None:
            raise ValueError("open_queue: give a Redis URL or a local broker endpoint, not both")
        return RedisQueue(redis_url, maxlen=maxlen, max_deliveries=max_deliveries, **redis_options)
    if redis_options:
        raise ValueError(f"open_queue: {sorted(redis_options)} apply only with a Redis URL")
    if broker is not None:
        return LocalQueue.connect(
            broker.address, broker.authkey, maxlen=maxlen, max_deliveries=max_deliveries
        )
    return LocalQueue(maxlen=maxlen, max_deliveries=max_deliveries)


def decode_or_dead_letter(
    queue: Queue, stream: str, group: str, messages: Sequence[Message], decode: Callable[[bytes], T]
) -> list[tuple[Message, T]]:
    """Decode each message; one that ``decode`` rejects with a ``ValueError`` (``WireError`` is one) goes to the
    dead-letter stream with the reason and is acknowledged there, so a worker keeps going past poison."""
    good: list[tuple[Message, T]] = []
    for msg in messages:
        try:
            good.append((msg, decode(msg.payload)))
        except ValueError as exc:
            log.warning("message %s on %s dead-lettered: %s", msg.id, stream, exc)
            queue.dead_letter(stream, group, msg, str(exc))
    return good
