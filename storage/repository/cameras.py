"""Cameras: each camera's latest run (source, start time, crop, frame size), its latest health, and its
health events (disconnected, reconnected, error)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from common.redact import redact_text, redact_url
from storage.models import HEALTH_EVENTS, CameraRow, HealthEventRow
from storage.repository._common import Instant, _ensure_camera, _insert, _text, _utc


def upsert_camera(
    session: Session,
    camera_id: str,
    source: str | int | None,
    start_time: Instant | None,
    *,
    crop: Sequence[int] | None = None,
    frame_size: tuple[int, int] | None = None,
) -> None:
    """Create or update camera ``camera_id`` with its ``source`` (stored with its password redacted),
    ``start_time`` (when its frame clock starts; None = unknown), ``crop`` (the camera's ``[x1, y1, x2,
    y2]`` of the source's frames, checked by the caller with :func:`pipeline.camera.crop.check_crop`; None =
    the whole frame) and ``frame_size`` (``(width, height)`` of the frames it works on, the crop's size when
    cropped; None = unknown). All four describe the camera's latest run and overwrite what was stored.
    Health columns are left as they are. Raises ``ValueError`` for a crop that is not four integers or a
    frame size that is not two positive integers."""
    _text(camera_id, "camera_id")
    if crop is not None:
        if len(crop) != 4 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in crop
        ):
            raise ValueError(f"crop: expected [x1, y1, x2, y2] integers or None, got {crop!r}")
        crop = [int(v) for v in crop]
    if frame_size is not None:
        if len(frame_size) != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in frame_size
        ):
            raise ValueError(
                f"frame_size: expected (width, height) positive integers or None, got {frame_size!r}"
            )
    values = {
        "id": camera_id,
        "source": None if source is None else redact_url(str(source)),
        "start_time": None if start_time is None else _utc(start_time, "start_time"),
        "crop": sa.null() if crop is None else crop,  # SQL NULL, not the JSON 'null' a None becomes
        "frame_width": None if frame_size is None else int(frame_size[0]),
        "frame_height": None if frame_size is None else int(frame_size[1]),
    }
    stmt = _insert(session, CameraRow.__table__).values(**values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"], set_={k: stmt.excluded[k] for k in values if k != "id"}
        )
    )


def update_camera_health(
    session: Session,
    camera_id: str,
    *,
    connected: bool,
    reconnects: int,
    last_frame_time: Instant | None,
    frames: int,
    fps: float | None,
    last_error: str | None,
    now: Instant,
) -> None:
    """Overwrite the latest health of ``camera_id`` (created if unknown): whether it is connected, how many
    times it reconnected, when its last frame arrived, frames read so far, measured frames per second, the
    last error (URLs in it redacted; None = none) and ``updated_at = now``."""
    _text(camera_id, "camera_id")
    if reconnects < 0 or frames < 0:
        raise ValueError(f"reconnects and frames must be >= 0, got {reconnects} and {frames}")
    if fps is not None and not (math.isfinite(fps) and fps >= 0):
        raise ValueError(f"fps: expected a finite value >= 0 or None, got {fps}")
    health = {
        "connected": bool(connected),
        "reconnects": int(reconnects),
        "last_frame_time": None if last_frame_time is None else _utc(last_frame_time, "last_frame_time"),
        "frames": int(frames),
        "fps": None if fps is None else float(fps),
        "last_error": None if last_error is None else redact_text(last_error),
        "updated_at": _utc(now, "now"),
    }
    stmt = _insert(session, CameraRow.__table__).values(id=camera_id, **health)
    session.execute(
        stmt.on_conflict_do_update(index_elements=["id"], set_={k: stmt.excluded[k] for k in health})
    )


def add_health_event(
    session: Session, camera_id: str, *, event: str, time: Instant, detail: str | None = None
) -> bool:
    """Record that ``camera_id`` had ``event`` (``'disconnected'``, ``'reconnected'`` or ``'error'``) at
    ``time``; ``detail`` is free text with URLs redacted. Idempotent on ``(camera_id, time, event)``.
    Returns True if the event was new."""
    _text(camera_id, "camera_id")
    if event not in HEALTH_EVENTS:
        raise ValueError(f"event: expected one of {HEALTH_EVENTS}, got {event!r}")
    _ensure_camera(session, camera_id)
    table = HealthEventRow.__table__
    stmt = (
        _insert(session, table)
        .values(
            camera_id=camera_id,
            time=_utc(time, "time"),
            event=event,
            detail=None if detail is None else redact_text(detail),
        )
        .on_conflict_do_nothing(index_elements=["camera_id", "time", "event"])
        .returning(table.c.id)
    )
    return session.execute(stmt).first() is not None
