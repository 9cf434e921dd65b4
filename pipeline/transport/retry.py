"""Which errors a worker loop may retry: the database or the queue went away, not a bug.

A worker that retries everything turns a programming error (a ``TypeError``, a ``KeyError``) into an endless,
quiet retry loop; one that retries nothing dies on the first dropped connection. So every worker catches
exactly :data:`RETRYABLE_ERRORS` around its I/O, asks :func:`is_retryable` about what it caught, and lets
everything else propagate::

    try:
        commit(...)
    except RETRYABLE_ERRORS as exc:
        if not is_retryable(exc):
            raise
        log.warning("...; retrying: %s", exc)
"""

from __future__ import annotations

import redis
from sqlalchemy import exc as sa_exc

from pipeline.transport.queues import QueueError
from storage.db import StoreError

__all__ = ["RETRYABLE_ERRORS", "is_retryable"]

# The classes to catch; DBAPIError is filtered further by is_retryable (an IntegrityError is no outage).
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.DBAPIError,
    StoreError,
    QueueError,
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
)


def is_retryable(exc: BaseException) -> bool:
    """True for a connection-level failure of the database or the queue, which a retry can outlast.

    That is: SQLAlchemy's ``OperationalError`` (server gone, connection dropped, lock timeout), any other
    ``DBAPIError`` only when SQLAlchemy invalidated the connection over it; :class:`storage.db.StoreError`;
    :class:`pipeline.transport.queues.QueueError`; redis ``ConnectionError``/``TimeoutError``; ``OSError``
    (sockets). False for everything else, such as ``IntegrityError``, ``ValueError`` or ``TypeError``.
    """
    if isinstance(exc, sa_exc.DBAPIError):
        return isinstance(exc, sa_exc.OperationalError) or bool(exc.connection_invalidated)
    return isinstance(exc, RETRYABLE_ERRORS)
