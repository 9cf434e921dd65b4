"""The embedded broker: :class:`LocalQueue`, an in-memory :class:`~pipeline.transport.queues.base.Queue` with
Redis Streams semantics, the default when no Redis URL is given.

In one process ``LocalQueue()`` is a thread-safe in-memory object. Across processes the parent calls
:func:`start_local_broker`, which serves one :class:`_Broker` from a ``multiprocessing`` manager process
(spawn-safe, Unix socket, random authkey), and children call :meth:`LocalQueue.connect` with its ``address``
and ``authkey`` (or receive a pickled ``LocalQueue``, which reconnects). The manager and the callables it is
registered with are pickled by their qualified names in this module, so they must stay module-level here.

Unlike Redis, ``LocalQueue`` trims only entries that every group has acknowledged (see
:mod:`pipeline.transport.queues`).
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing import ProcessError, get_context, parent_process
from multiprocessing.managers import BaseManager, BaseProxy, RemoteError
from typing import Any

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

__all__ = ["BrokerEndpoint", "LocalBroker", "LocalQueue", "start_local_broker"]

log = logging.getLogger(__name__)


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
        return format_id(new)

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
            "id": format_id(i),
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
                    return [(format_id(i), s.entries[i]["data"], 1) for i in fresh]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                s.arrived.wait(remaining)

    def ack(self, stream: str, group: str, ids: list[tuple[int, int]], delete: bool = False) -> int:
        with self._lock:
            s = self._streams.get(stream)
            g = None if s is None else s.groups.get(group)
            if s is None or g is None:
                # As XACK: nothing pending there. As XDEL, a missing group does not stop the delete.
                if s is not None and delete:
                    self._delete(s, ids)
                return 0
            done = sum(g.pending.pop(i, None) is not None for i in ids)
            if delete:
                self._delete(s, ids)
            elif done:
                self._trim(s)
            return done

    @staticmethod
    def _delete(s: _Stream, ids: list[tuple[int, int]]) -> None:
        """XDEL: remove ``ids`` from the stream; other groups' pending copies go too (Redis 7's XAUTOCLAIM
        drops deleted entries from a pending list the same way)."""
        gone = {i for i in ids if s.entries.pop(i, None) is not None}
        if not gone:
            return
        s.ids = [i for i in s.ids if i not in gone]
        for other in s.groups.values():
            for i in gone:
                other.pending.pop(i, None)

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
                    dead.append((format_id(i), p.deliveries))
                else:
                    out.append((format_id(i), s.entries[i]["data"], p.deliveries))
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
            return [(format_id(i), dict(s.entries[i])) for i in s.ids[:count]]

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

    def __init__(self, *, maxlen: int, max_deliveries: int) -> None:
        self.maxlen = check_positive("maxlen", maxlen)
        self.max_deliveries = check_positive("max_deliveries", max_deliveries)
        self._endpoint: BrokerEndpoint | None = None
        self._broker: _Broker | None = _Broker()
        self._proxy: BaseProxy | None = None

    @classmethod
    def connect(
        cls,
        address: Any,
        authkey: bytes,
        *,
        maxlen: int,
        max_deliveries: int,
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
        self._call("ensure_group", check_name("stream", stream), check_name("group", group))

    def publish(self, stream: str, payload: bytes) -> str:
        return self._call("publish", check_name("stream", stream), check_payload(payload), self.maxlen)

    def consume(
        self, stream: str, group: str, consumer: str, *, count: int = 1, block_ms: int = 1000
    ) -> list[Message]:
        rows = self._call(
            "consume",
            check_name("stream", stream),
            check_name("group", group),
            check_name("consumer", consumer),
            check_positive("count", count),
            check_positive("block_ms", block_ms, allow_zero=True),
        )
        return [Message(i, stream, payload, n) for i, payload, n in rows]

    def ack(self, stream: str, group: str, ids: Sequence[str], *, delete: bool = False) -> int:
        parsed = [parse_id(i) for i in ids]
        if not isinstance(delete, bool):
            raise ValueError(f"delete: expected a bool, got {delete!r}")
        if not parsed:
            return 0
        return self._call("ack", check_name("stream", stream), check_name("group", group), parsed, delete)

    def reclaim(
        self, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int = 10
    ) -> list[Message]:
        rows, dead = self._call(
            "reclaim",
            check_name("stream", stream),
            check_name("group", group),
            check_name("consumer", consumer),
            check_positive("min_idle_ms", min_idle_ms, allow_zero=True),
            check_positive("count", count),
            self.max_deliveries,
            self.maxlen,
        )
        for i, n in dead:
            log.warning("dead-lettered %s %s after %d deliveries (poison message?)", stream, i, n)
        return [Message(i, stream, payload, n) for i, payload, n in rows]

    def recover(self, stream: str, group: str, consumer: str, *, count: int = 100) -> list[Message]:
        rows, dead = self._call(
            "reclaim",
            check_name("stream", stream),
            check_name("group", group),
            check_name("consumer", consumer),
            0,
            check_positive("count", count),
            self.max_deliveries,
            self.maxlen,
            consumer,
        )
        for i, n in dead:
            log.warning("dead-lettered %s %s after %d deliveries (poison message?)", stream, i, n)
        return [Message(i, stream, payload, n) for i, payload, n in rows]

    def dead_letter(self, stream: str, group: str, message: Message, reason: str) -> None:
        i = parse_id(message.id)
        self._call(
            "dead_letter",
            check_name("stream", stream),
            check_name("group", group),
            i,
            check_payload(message.payload),
            message.deliveries,
            clip_reason(reason),
            self.maxlen,
        )
        log.warning("dead-lettered %s %s: %s", stream, message.id, clip_reason(reason))

    def dead_letters(self, stream: str, *, count: int = 100) -> list[DeadLetter]:
        rows = self._call("dead_letters", check_name("stream", stream), check_positive("count", count))
        return [dead_letter_from_fields(i, f) for i, f in rows]

    def pending_count(self, stream: str, group: str) -> int:
        return self._call("pending_count", check_name("stream", stream), check_name("group", group))

    def lag(self, stream: str, group: str) -> int:
        return self._call("lag", check_name("stream", stream), check_name("group", group))

    def length(self, stream: str) -> int:
        return self._call("length", check_name("stream", stream))

    def close(self) -> None:
        # Dropping the proxy decrefs it at the broker and closes its connections.
        self._broker = None
        self._proxy = None


def _reconnect_local(address: Any, authkey: bytes, maxlen: int, max_deliveries: int) -> LocalQueue:
    return LocalQueue.connect(address, authkey, maxlen=maxlen, max_deliveries=max_deliveries)


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

    def queue(self, *, maxlen: int, max_deliveries: int) -> LocalQueue:
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
