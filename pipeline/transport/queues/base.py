"""What every queue shares: the :class:`Queue` contract, the :class:`Message` and :class:`DeadLetter` it hands
out, :class:`QueueError`, the argument checks both implementations apply, and
:func:`decode_or_dead_letter` for consumers (see :mod:`pipeline.transport.queues` for the delivery model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "DeadLetter",
    "Message",
    "Queue",
    "QueueError",
    "check_name",
    "check_payload",
    "check_positive",
    "clip_reason",
    "dead_letter_from_fields",
    "dead_letter_stream",
    "decode_or_dead_letter",
    "format_id",
    "parse_id",
]

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ":dead"
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

    def ack(self, stream: str, group: str, ids: Sequence[str], *, delete: bool = False) -> int:
        """Acknowledge ``ids`` for ``group``; return how many were pending. Unknown ids are ignored.

        With ``delete=True`` the entries are also removed from ``stream`` in the same atomic step (Redis:
        ``XACK`` + ``XDEL`` in one ``MULTI``), so large payloads (JPEG crops) do not wait for ``maxlen`` to
        trim them. Only for a stream read by this one consumer group: another group loses the entries too
        (its pending copies are dropped as trimmed). The dead-letter stream is not touched.
        """
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


def check_name(what: str, value: object) -> str:
    """``value`` if it is a non-empty str (a stream, group or consumer name), else ValueError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: expected a non-empty str, got {value!r}")
    return value


def check_positive(what: str, value: object, *, allow_zero: bool = False) -> int:
    """``value`` if it is an int >= 1 (>= 0 with ``allow_zero``; a bool is no int here), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{what}: expected an int {bound}, got {value!r}")
    return value


def parse_id(value: object) -> tuple[int, int]:
    """``"<ms>-<seq>"`` -> (ms, seq); ValueError otherwise."""
    if isinstance(value, str):
        ms, sep, seq = value.partition("-")
        if sep and ms.isdigit() and seq.isdigit():
            return int(ms), int(seq)
    raise ValueError(f"message id: expected '<ms>-<seq>', got {value!r}")


def format_id(i: tuple[int, int]) -> str:
    """(ms, seq) -> ``"<ms>-<seq>"``, the inverse of :func:`parse_id`."""
    return f"{i[0]}-{i[1]}"


def clip_reason(reason: object) -> str:
    """A dead-letter reason as text, cut to 500 characters so a huge error cannot bloat the stream."""
    return str(reason)[:_REASON_MAX_CHARS]


def check_payload(payload: object) -> bytes:
    """``payload`` if it is ``bytes``, else ValueError naming its type."""
    if not isinstance(payload, bytes):
        raise ValueError(f"payload: expected bytes, got {type(payload).__name__}")
    return payload


def dead_letter_from_fields(entry_id: str, f: dict[Any, Any]) -> DeadLetter:
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
