"""Message queues between pipeline stages: one interface, Redis Streams or an embedded broker behind it.

Semantics (both implementations): a *stream* is an append-only log of entries with ids ``"<ms>-<seq>"``; a
*consumer group* reads it once as a whole, handing each new entry to exactly one of its named consumers and
remembering it as *pending* for that consumer until it is acknowledged. Delivery is at-least-once:

1. every consumer calls :meth:`Queue.ensure_group` first (idempotent);
2. :meth:`Queue.consume` hands out new entries (``deliveries == 1``);
3. the consumer commits its result (SQL, or a downstream :meth:`Queue.publish`) **then** :meth:`Queue.ack`;
   ``ack(..., delete=True)`` also removes the entries from the stream at once (Redis ``XACK`` + ``XDEL`` in
   one ``MULTI``), for a stream with a single consumer group whose entries are large (JPEG crops);
4. entries of a crashed consumer stay pending; any consumer takes them over with :meth:`Queue.reclaim` once
   they have been idle ``min_idle_ms`` (``deliveries`` grows by one per hand-out). An entry handed out more
   than ``max_deliveries`` times is a poison message: ``reclaim`` moves it to the dead-letter stream
   ``<stream>:dead`` instead. A consumer that cannot decode a payload calls :meth:`Queue.dead_letter` itself.

Handlers must therefore be idempotent on the message's natural key. Payloads are opaque bytes (see
:mod:`pipeline.transport.wire`). Every queue-level failure raises :class:`QueueError`; bad arguments raise ``ValueError``.

Implementations, one module each:

- :mod:`~pipeline.transport.queues.base`: the :class:`Queue` contract, :class:`Message`, :class:`DeadLetter`,
  :class:`QueueError`, shared argument checks and :func:`decode_or_dead_letter`;
- :mod:`~pipeline.transport.queues.redis_streams`: :class:`RedisQueue` for production (``XADD MAXLEN ~``,
  ``XREADGROUP``, ``XACK``, ``XAUTOCLAIM``); it rides out a Redis restart by retrying with backoff for a
  bounded time and re-creating groups it had ensured;
- :mod:`~pipeline.transport.queues.local`: :class:`LocalQueue`, the embedded default when no Redis URL is given.
  In one process it is a thread-safe in-memory object; across processes the parent calls
  :func:`start_local_broker`, which serves one broker from a ``multiprocessing`` manager process (spawn-safe,
  Unix socket, random authkey), and children call :meth:`LocalQueue.connect` with its ``address`` and
  ``authkey`` (or receive a pickled ``LocalQueue``).

:func:`open_queue` picks one. One deliberate difference: Redis ``MAXLEN ~`` trims the oldest entries whether or
not a group has consumed them (Redis 7 has no "acknowledged only" trim), so a producer more than ``maxlen``
entries ahead of its consumers loses entries there. ``LocalQueue`` trims only entries that every group has
acknowledged, so its streams exceed ``maxlen`` while consumers lag and never drop unconsumed work.
"""

from __future__ import annotations

from pipeline.transport.queues.base import (
    DEAD_LETTER_SUFFIX,
    DeadLetter,
    Message,
    Queue,
    QueueError,
    dead_letter_stream,
    decode_or_dead_letter,
)
from pipeline.transport.queues.local import BrokerEndpoint, LocalBroker, LocalQueue, start_local_broker
from pipeline.transport.queues.redis_streams import RedisQueue

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
    "decode_or_dead_letter",
    "open_queue",
    "start_local_broker",
]


def open_queue(
    redis_url: str | None = None,
    *,
    broker: BrokerEndpoint | None = None,
    maxlen: int,
    max_deliveries: int,
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
