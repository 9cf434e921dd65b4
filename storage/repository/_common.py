"""Helpers shared by the repository's modules: time and text checks, the dialect's INSERT, existence tests.

Private to :mod:`storage.repository`. ``Instant`` (POSIX seconds or an aware datetime) is the type every
time parameter accepts; ``log`` is the one logger of the package, named ``storage.repository`` as it was
before the package was split into modules.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.db import StoreError
from storage.models import CameraRow

log = logging.getLogger("storage.repository")

Instant = float | int | datetime

_VECTOR_DTYPE = np.dtype("<f4")  # stored byte order, whatever the machine's


def _utc(value: Instant, name: str) -> datetime:
    """``value`` (POSIX seconds or an aware datetime) as an aware UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(
                f"{name}: naive datetime {value.isoformat()}; pass POSIX seconds or an aware datetime"
            )
        return value.astimezone(UTC)
    return datetime.fromtimestamp(_posix(value, name), UTC)


def _posix(value: Instant, name: str) -> float:
    if isinstance(value, datetime):
        return _utc(value, name).timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name}: expected POSIX seconds or an aware datetime, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite time, got {value}")
    return float(value)


def _overlapping(stmt, start: sa.ColumnElement, end: sa.ColumnElement, since, until, convert, caller: str):
    """``stmt`` kept to rows whose ``[start, end]`` overlaps ``[since, until]`` (either None: unbounded); the
    bounds are converted with ``convert`` (``_utc`` or ``_posix``, matching the columns). Raises
    ``ValueError`` naming ``caller`` when ``since`` is after ``until``."""
    lo = None if since is None else convert(since, "since")
    hi = None if until is None else convert(until, "until")
    if lo is not None and hi is not None and lo > hi:
        show = (lambda v: v.isoformat()) if isinstance(lo, datetime) else str
        raise ValueError(f"{caller}: since {show(lo)} is after until {show(hi)}")
    if lo is not None:
        stmt = stmt.where(end >= lo)
    if hi is not None:
        stmt = stmt.where(start <= hi)
    return stmt


def _text(value: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value


def _insert(session: Session, table: sa.Table):
    """The dialect's INSERT (the one with ``on_conflict_*``) for ``table``."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise StoreError(f"unsupported database {name!r}: the store runs on sqlite or postgresql")


def _ensure_camera(session: Session, camera_id: str) -> None:
    session.execute(_insert(session, CameraRow.__table__).values(id=camera_id).on_conflict_do_nothing())


def _exists(session: Session, column: sa.ColumnElement, value: Any) -> bool:
    return session.execute(sa.select(sa.literal(1)).where(column == value)).first() is not None


def _vector(value: Any, name: str, *, allow_empty: bool) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim != 1 or (arr.size == 0 and not allow_empty) or not np.isfinite(arr).all():
        need = "(E,) finite, non-empty" if not allow_empty else "(K,) finite"
        raise ValueError(f"{name}: expected a {need} float32 vector, got shape {arr.shape}")
    return arr
