"""Data access of the store: functions that take a ``Session`` and never commit.

The caller's worker loop owns the transaction: it calls several of these, commits, and only then
acknowledges the queue message. Because delivery is at-least-once, every write that a redelivered message
can repeat is idempotent on a natural key (``INSERT ... ON CONFLICT DO NOTHING``): a repeat returns what the
first call stored and changes nothing.

Times: parameters accept POSIX seconds (``float``, UTC, as the pipeline's messages carry them) or
timezone-aware ``datetime``; a naive ``datetime`` raises ``ValueError``. Results carry timezone-aware UTC
``datetime``, except :class:`GalleryEntry`, whose times are POSIX seconds for the matcher's arithmetic.
Only SQLite and PostgreSQL are supported.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.pictures import PICTURE_KINDS, Picture
from common.redact import redact_text, redact_url
from storage import queries
from storage.boxes import TrackBoxes, decode_boxes, encode_boxes
from storage.db import StoreError
from storage.models import (
    HEALTH_EVENTS,
    Base,
    CameraRow,
    EmbeddingRow,
    HealthEventRow,
    IdentityRow,
    MatchProgressRow,
    RetiredIdentityRow,
    SightingRow,
    TrackletBoxesRow,
    TrackletPictureRow,
    TrackletRow,
    UTCDateTime,
    identity_timeline,
)

__all__ = [
    "CameraBoxes",
    "ForgetReport",
    "GalleryEntry",
    "IdentityRetiredError",
    "Picture",
    "PruneReport",
    "StoredPicture",
    "IdentitySummary",
    "StreamProgress",
    "Instant",
    "Passage",
    "TimelineEntry",
    "TrackletLike",
    "add_boxes",
    "add_embedding",
    "add_health_event",
    "add_pictures",
    "add_sighting",
    "add_tracklet",
    "add_tracklet_from",
    "boxes_of_camera",
    "boxes_of_tracklet",
    "camera_runs",
    "counts",
    "ensure_identity",
    "forget_identity",
    "is_retired",
    "list_identities",
    "load_gallery",
    "load_progress",
    "max_identity_id",
    "mot_rows",
    "passed_a_then_b",
    "pictures_of_identity",
    "pictures_of_tracklet",
    "prune_before",
    "save_progress",
    "sighting_of",
    "timeline",
    "update_camera_health",
    "update_identity_stats",
    "upsert_camera",
]

log = logging.getLogger(__name__)

Instant = float | int | datetime

_TRACKLET_KEY = ("camera_id", "session_key", "track_id", "chunk")
_VECTOR_DTYPE = np.dtype("<f4")  # stored byte order, whatever the machine's


# ----------------------------------------------------------------------------------------------------
# Result rows


@dataclass(frozen=True)
class TimelineEntry:
    """One sighting of an identity: a tracklet in a camera over ``[start_time, end_time]`` (UTC)."""

    identity_id: int
    camera_id: str
    start_time: datetime
    end_time: datetime
    tracklet_id: int
    similarity: float | None


@dataclass(frozen=True)
class IdentitySummary:
    """An identity with its sightings summarised; ``cameras`` in the order it first appeared in them."""

    identity_id: int
    first_seen: datetime
    last_seen: datetime
    num_tracklets: int
    cameras: tuple[str, ...]


@dataclass(frozen=True)
class Passage:
    """An identity left camera A (tracklet ``tracklet_a``) and entered camera B ``gap_s`` seconds later
    (negative when the two sightings overlap)."""

    identity_id: int
    tracklet_a: int
    tracklet_b: int
    left_a: datetime
    entered_b: datetime
    gap_s: float


@dataclass(frozen=True)
class GalleryEntry:
    """One assigned tracklet with its embedding: what a restarting matcher rebuilds its gallery from.

    ``start_time``/``end_time`` are POSIX seconds (the floats the tracklet message carried, exactly);
    ``vector`` (E,) float32 and ``part_visibility`` (K,) float32 are bit-exact copies of what was stored.
    """

    identity_id: int
    tracklet_id: int
    camera_id: str
    start_time: float
    end_time: float
    vector: np.ndarray = field(repr=False)
    part_visibility: np.ndarray = field(repr=False)
    session_key: str = ""
    track_id: int = 0
    chunk: int = 0


@dataclass(frozen=True)
class StreamProgress:
    """One row of ``match_progress``: how far the matcher has read one camera worker run in order."""

    session_key: str
    camera_id: str
    next_seq: int
    watermark: float | None
    final: bool


class TrackletLike(Protocol):
    """The fields shared by ``pipeline.transport.messages.Tracklet`` and ``TrackletEmbedding``."""

    camera_id: str
    track_id: int
    chunk: int
    first_frame: int
    last_frame: int
    start_time: float
    end_time: float
    num_frames: int
    boxes: np.ndarray


# ----------------------------------------------------------------------------------------------------
# Helpers


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


def _box_summary(boxes: Any) -> dict[str, Any]:
    """Mean box width/height (pixels) and the first and last box ``[x1, y1, x2, y2]`` of ``boxes`` (N, 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return {"num_crops": 0, "mean_box_w": None, "mean_box_h": None, "first_box": None, "last_box": None}
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise ValueError(f"boxes: expected finite (N, 4) xyxy, got shape {arr.shape}")
    return {
        "num_crops": int(arr.shape[0]),
        "mean_box_w": float(np.mean(arr[:, 2] - arr[:, 0])),
        "mean_box_h": float(np.mean(arr[:, 3] - arr[:, 1])),
        "first_box": [round(float(v), 3) for v in arr[0]],
        "last_box": [round(float(v), 3) for v in arr[-1]],
    }


# ----------------------------------------------------------------------------------------------------
# Cameras


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


# ----------------------------------------------------------------------------------------------------
# Tracklets and embeddings


def add_tracklet(
    session: Session,
    *,
    session_key: str,
    camera_id: str,
    track_id: int,
    chunk: int,
    first_frame: int,
    last_frame: int,
    start_time: Instant,
    end_time: Instant,
    num_frames: int,
    boxes: Any = (),
    seq: int | None = None,
    published_at: Instant | None = None,
) -> int:
    """Store a closed tracklet and return its ``tracklets.id``.

    The natural key is ``(camera_id, session_key, track_id, chunk)``; ``session_key`` names the camera
    worker's run (track ids restart with the worker), and must be the same for every delivery of a message.
    Idempotent: when the key exists, returns the existing id and changes nothing (a repeat whose span
    differs is logged as a warning: it means two runs share a ``session_key``).
    ``boxes`` (N, 4) xyxy pixels of the kept crops, possibly empty, are summarised (mean size, first and
    last box). ``seq`` and ``published_at`` are the camera worker's number for the tracklet and the time it
    published it, when known. Creates the camera row if it does not exist yet. Raises ``ValueError`` on a
    reversed span.
    """
    _text(session_key, "session_key")
    _text(camera_id, "camera_id")
    start, end = _posix(start_time, "start_time"), _posix(end_time, "end_time")
    if last_frame < first_frame or end < start or num_frames < 0 or chunk < 0:
        raise ValueError(
            f"tracklet {camera_id}/{session_key}/{track_id}/{chunk}: expected first_frame <= last_frame, "
            f"start_time <= end_time, num_frames >= 0 and chunk >= 0, got frames {first_frame}..{last_frame}, "
            f"times {start}..{end}, num_frames {num_frames}, chunk {chunk}"
        )
    _ensure_camera(session, camera_id)
    key = {"camera_id": camera_id, "session_key": session_key, "track_id": int(track_id), "chunk": int(chunk)}
    table = TrackletRow.__table__
    stmt = (
        _insert(session, table)
        .values(
            **key,
            first_frame=int(first_frame),
            last_frame=int(last_frame),
            start_time=_utc(start, "start_time"),
            end_time=_utc(end, "end_time"),
            start_posix=start,
            end_posix=end,
            num_frames=int(num_frames),
            seq=None if seq is None else int(seq),
            published_at=None if published_at is None else _utc(published_at, "published_at"),
            **_box_summary(boxes),
        )
        .on_conflict_do_nothing(index_elements=list(_TRACKLET_KEY))
        .returning(table.c.id)
    )
    new_id = session.execute(stmt).scalar()
    if new_id is not None:
        return int(new_id)
    row = session.execute(
        sa.select(table.c.id, table.c.first_frame, table.c.last_frame).where(
            *(table.c[k] == v for k, v in key.items())
        )
    ).one()
    if (row.first_frame, row.last_frame) != (first_frame, last_frame):
        log.warning(
            "tracklet %s already stored as id %d with frames %d..%d, not %d..%d: is session_key unique per run?",
            key,
            row.id,
            row.first_frame,
            row.last_frame,
            first_frame,
            last_frame,
        )
    return int(row.id)


def add_tracklet_from(session: Session, message: TrackletLike, *, session_key: str) -> int:
    """:func:`add_tracklet` with the fields of a ``Tracklet`` or ``TrackletEmbedding`` message."""
    return add_tracklet(
        session,
        session_key=session_key,
        camera_id=message.camera_id,
        track_id=int(message.track_id),
        chunk=int(message.chunk),
        first_frame=int(message.first_frame),
        last_frame=int(message.last_frame),
        start_time=float(message.start_time),
        end_time=float(message.end_time),
        num_frames=int(message.num_frames),
        boxes=message.boxes,
        seq=order.seq if (order := getattr(message, "order", None)) is not None else None,
        published_at=order.published_at if order is not None else None,
    )


def add_embedding(
    session: Session, tracklet_id: int, *, model: str, vector: Any, part_visibility: Any = ()
) -> bool:
    """Store the embedding ``vector`` (E,) of tracklet ``tracklet_id`` made by ``model``, with its
    ``part_visibility`` (K,) (possibly empty), as float32. Idempotent on ``(tracklet_id, model)``: a repeat
    keeps the first vector. Returns True if it was new. Raises ``LookupError`` for an unknown tracklet."""
    _text(model, "model")
    vec = _vector(vector, "vector", allow_empty=False)
    vis = _vector(part_visibility, "part_visibility", allow_empty=True)
    if not _exists(session, TrackletRow.__table__.c.id, tracklet_id):
        raise LookupError(f"add_embedding: no tracklet with id {tracklet_id}")
    table = EmbeddingRow.__table__
    stmt = (
        _insert(session, table)
        .values(
            tracklet_id=int(tracklet_id),
            model=model,
            dim=int(vec.shape[0]),
            vector=vec.astype(_VECTOR_DTYPE).tobytes(),
            part_visibility=vis.astype(_VECTOR_DTYPE).tobytes(),
        )
        .on_conflict_do_nothing(index_elements=["tracklet_id", "model"])
        .returning(table.c.tracklet_id)
    )
    return session.execute(stmt).first() is not None


# ----------------------------------------------------------------------------------------------------
# Identities and sightings


class IdentityRetiredError(LookupError):
    """The identity id was forgotten or pruned (``retired_identities``): it is never used again.

    A matcher that still holds the identity in its gallery raises this from :func:`ensure_identity`; it
    should roll back, drop the identity (rebuild its gallery from SQL) and decide again."""

    def __init__(self, identity_id: int, reason: str) -> None:
        super().__init__(f"identity {identity_id} was {reason} and is never used again")
        self.identity_id = identity_id
        self.reason = reason


def _raise_if_retired(session: Session, identity_id: int) -> None:
    retired = RetiredIdentityRow.__table__
    reason = session.execute(sa.select(retired.c.reason).where(retired.c.identity_id == identity_id)).scalar()
    if reason is not None:
        raise IdentityRetiredError(identity_id, reason)


def ensure_identity(session: Session, identity_id: int, *, created_at: Instant) -> bool:
    """Create identity ``identity_id`` (chosen by the matcher, >= 0) if it does not exist. Returns True if it
    was created; an existing identity is left unchanged. Raises :class:`IdentityRetiredError` when the id
    was forgotten or pruned (see :func:`forget_identity`), also when that happens concurrently.

    On PostgreSQL an existing identity is held (``FOR KEY SHARE``) until the caller's transaction ends, so a
    concurrent :func:`forget_identity` or :func:`prune_before` either waits for it (and then deletes what
    it added too) or has committed first, in which case this raises."""
    if isinstance(identity_id, bool) or int(identity_id) != identity_id or identity_id < 0:
        raise ValueError(f"identity_id: expected an integer >= 0, got {identity_id!r}")
    identity_id = int(identity_id)
    _raise_if_retired(session, identity_id)
    table = IdentityRow.__table__
    stmt = (
        _insert(session, table)
        .values(id=identity_id, created_at=_utc(created_at, "created_at"))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    if session.execute(stmt).first() is not None:
        # A forget that deleted the row while we waited to insert has committed its tombstone by now.
        _raise_if_retired(session, identity_id)
        return True
    held = session.execute(
        sa.select(table.c.id).where(table.c.id == identity_id).with_for_update(key_share=True)
    ).first()
    if held is None:  # deleted by a transaction that committed meanwhile
        _raise_if_retired(session, identity_id)
        raise LookupError(f"ensure_identity: identity {identity_id} was deleted meanwhile")
    return False


def add_sighting(
    session: Session, tracklet_id: int, identity_id: int, similarity: float | None, decided_at: Instant
) -> int:
    """Record that tracklet ``tracklet_id`` is identity ``identity_id`` (``similarity`` to it; None when the
    tracklet founded a new identity), decided at ``decided_at``, and refresh that identity's statistics.

    One identity per tracklet, idempotent: if the tracklet already has a sighting, nothing changes and the
    identity stored for it is returned (a different ``identity_id`` is logged as a warning); otherwise
    returns ``identity_id``. Raises ``LookupError`` if the tracklet or the identity does not exist (create
    identities with :func:`ensure_identity`).
    """
    if similarity is not None and not math.isfinite(similarity):
        raise ValueError(f"similarity: expected a finite float or None, got {similarity}")
    sightings = SightingRow.__table__
    existing = sighting_of(session, tracklet_id)
    if existing is None:
        if not _exists(session, TrackletRow.__table__.c.id, tracklet_id):
            raise LookupError(f"add_sighting: no tracklet with id {tracklet_id}")
        if not _exists(session, IdentityRow.__table__.c.id, identity_id):
            raise LookupError(f"add_sighting: no identity with id {identity_id} (call ensure_identity first)")
        stmt = (
            _insert(session, sightings)
            .values(
                tracklet_id=int(tracklet_id),
                identity_id=int(identity_id),
                similarity=None if similarity is None else float(similarity),
                decided_at=_utc(decided_at, "decided_at"),
            )
            .on_conflict_do_nothing(index_elements=["tracklet_id"])
            .returning(sightings.c.identity_id)
        )
        if session.execute(stmt).first() is not None:
            update_identity_stats(session, identity_id)
            return int(identity_id)
        # Another transaction inserted it between our check and our insert.
        existing = sighting_of(session, tracklet_id)
    if existing != identity_id:
        log.warning(
            "tracklet %d is already identity %d; ignoring the new assignment to %d",
            tracklet_id,
            existing,
            identity_id,
        )
    return int(existing)


def sighting_of(session: Session, tracklet_id: int) -> int | None:
    """The identity tracklet ``tracklet_id`` was assigned to, or None if it has no sighting yet."""
    sightings = SightingRow.__table__
    found = session.execute(
        sa.select(sightings.c.identity_id).where(sightings.c.tracklet_id == tracklet_id)
    ).scalar()
    return None if found is None else int(found)


def update_identity_stats(session: Session, identity_id: int) -> None:
    """Recompute ``first_seen``, ``last_seen``, ``num_tracklets`` and ``num_cameras`` of ``identity_id`` from
    its sightings (NULL times and zero counts when it has none). :func:`add_sighting` calls this; call it
    yourself after changing sightings by other means. Raises ``LookupError`` for an unknown identity."""
    s, t = SightingRow.__table__, TrackletRow.__table__
    stats = session.execute(
        sa.select(
            sa.func.min(t.c.start_time).label("first_seen"),
            sa.func.max(t.c.end_time).label("last_seen"),
            sa.func.count().label("num_tracklets"),
            sa.func.count(sa.distinct(t.c.camera_id)).label("num_cameras"),
        )
        .select_from(s.join(t, t.c.id == s.c.tracklet_id))
        .where(s.c.identity_id == identity_id)
    ).one()
    identities = IdentityRow.__table__
    result = session.execute(
        sa.update(identities).where(identities.c.id == identity_id).values(**stats._asdict())
    )
    if result.rowcount == 0:
        raise LookupError(f"update_identity_stats: no identity with id {identity_id}")


def max_identity_id(session: Session) -> int:
    """The largest identity id ever used: stored in ``identities`` or retired (forgotten or pruned, in
    ``retired_identities``); 0 when there is none. So ``max_identity_id(s) + 1`` is free and was never
    anybody's: a restarted matcher numbers its new identities from there."""
    stored = sa.select(sa.func.max(IdentityRow.__table__.c.id)).scalar_subquery()
    retired = sa.select(sa.func.max(RetiredIdentityRow.__table__.c.identity_id)).scalar_subquery()
    row = session.execute(sa.select(sa.func.coalesce(stored, 0), sa.func.coalesce(retired, 0))).one()
    return int(max(row))


def is_retired(session: Session, identity_id: int) -> bool:
    """Whether ``identity_id`` was forgotten or pruned (it is never used again)."""
    return _exists(session, RetiredIdentityRow.__table__.c.identity_id, int(identity_id))


def load_gallery(session: Session, model: str) -> list[GalleryEntry]:
    """Every tracklet that has both a sighting and an embedding of ``model``, ordered by start time then
    tracklet id: what a restarting matcher needs to rebuild its gallery. Embeddings of other models are left
    out (they are not comparable)."""
    e, t, s = EmbeddingRow.__table__, TrackletRow.__table__, SightingRow.__table__
    rows = session.execute(
        sa.select(
            s.c.identity_id,
            t.c.id,
            t.c.camera_id,
            t.c.start_posix,
            t.c.end_posix,
            e.c.vector,
            e.c.part_visibility,
            t.c.session_key,
            t.c.track_id,
            t.c.chunk,
        )
        .select_from(e.join(t, t.c.id == e.c.tracklet_id).join(s, s.c.tracklet_id == t.c.id))
        .where(e.c.model == model)
        .order_by(t.c.start_posix, t.c.id)
    )
    return [
        GalleryEntry(
            identity_id=int(r.identity_id),
            tracklet_id=int(r.id),
            camera_id=r.camera_id,
            start_time=float(r.start_posix),
            end_time=float(r.end_posix),
            vector=np.frombuffer(r.vector, _VECTOR_DTYPE).astype(np.float32),
            part_visibility=np.frombuffer(r.part_visibility, _VECTOR_DTYPE).astype(np.float32),
            session_key=r.session_key,
            track_id=int(r.track_id),
            chunk=int(r.chunk),
        )
        for r in rows
    ]


def load_progress(session: Session) -> list[StreamProgress]:
    """Every ``match_progress`` row (one per camera worker run the matcher has read in order)."""
    table = MatchProgressRow.__table__
    return [
        StreamProgress(r.session_key, r.camera_id, int(r.next_seq), r.watermark, bool(r.final))
        for r in session.execute(sa.select(table).order_by(table.c.session_key, table.c.camera_id))
    ]


def save_progress(session: Session, rows: list[StreamProgress], *, now: datetime) -> None:
    """Insert or update ``match_progress`` rows (in the caller's transaction)."""
    table = MatchProgressRow.__table__
    for p in rows:
        _text(p.session_key, "session_key")
        _text(p.camera_id, "camera_id")
        finite = p.watermark is not None and math.isfinite(p.watermark)
        values = {
            "next_seq": int(p.next_seq),
            "watermark": float(p.watermark) if finite else None,
            "final": bool(p.final),
            "updated_at": now,
        }
        stmt = (
            _insert(session, table)
            .values(session_key=p.session_key, camera_id=p.camera_id, **values)
            .on_conflict_do_update(index_elements=["session_key", "camera_id"], set_=values)
        )
        session.execute(stmt)


# ----------------------------------------------------------------------------------------------------
# Queries (the CLI's questions)


_COUNTED = (
    CameraRow,
    HealthEventRow,
    TrackletRow,
    EmbeddingRow,
    IdentityRow,
    SightingRow,
    TrackletPictureRow,
    TrackletBoxesRow,
    RetiredIdentityRow,
)


def counts(session: Session) -> dict[str, int]:
    """Rows per table, keyed by table name (``cameras``, ``camera_health_events``, ``tracklets``,
    ``embeddings``, ``identities``, ``sightings``, ``tracklet_pictures``, ``tracklet_boxes``,
    ``retired_identities``)."""
    return {
        row.__tablename__: int(session.execute(sa.select(sa.func.count()).select_from(row)).scalar_one())
        for row in _COUNTED
    }


def list_identities(session: Session, *, min_cameras: int = 1) -> list[IdentitySummary]:
    """Identities seen in at least ``min_cameras`` (>= 1) distinct cameras, by identity id."""
    if min_cameras < 1:
        raise ValueError(f"min_cameras: expected >= 1, got {min_cameras}")
    s, t = SightingRow.__table__, TrackletRow.__table__
    joined = s.join(t, t.c.id == s.c.tracklet_id)
    qualified = (
        sa.select(s.c.identity_id)
        .select_from(joined)
        .group_by(s.c.identity_id)
        .having(sa.func.count(sa.distinct(t.c.camera_id)) >= min_cameras)
    )
    first = sa.func.min(t.c.start_time)
    rows = session.execute(
        sa.select(
            s.c.identity_id,
            t.c.camera_id,
            first.label("first_seen"),
            sa.func.max(t.c.end_time).label("last_seen"),
            sa.func.count().label("num_tracklets"),
        )
        .select_from(joined)
        .where(s.c.identity_id.in_(qualified))
        .group_by(s.c.identity_id, t.c.camera_id)
        .order_by(s.c.identity_id, first, t.c.camera_id)
    )
    out: list[IdentitySummary] = []
    for r in rows:
        if out and out[-1].identity_id == r.identity_id:
            prev = out[-1]
            out[-1] = IdentitySummary(
                prev.identity_id,
                min(prev.first_seen, r.first_seen),
                max(prev.last_seen, r.last_seen),
                prev.num_tracklets + r.num_tracklets,
                (*prev.cameras, r.camera_id),
            )
        else:
            out.append(
                IdentitySummary(r.identity_id, r.first_seen, r.last_seen, r.num_tracklets, (r.camera_id,))
            )
    return out


def timeline(
    session: Session, identity_id: int, since: Instant | None = None, until: Instant | None = None
) -> list[TimelineEntry]:
    """Where identity ``identity_id`` was: its sightings (rows of the ``identity_timeline`` view) whose
    interval overlaps ``[since, until]`` (bounds inclusive; None = unbounded), by start time then tracklet
    id. Raises ``ValueError`` when ``since`` is after ``until``."""
    v = identity_timeline
    stmt = sa.select(
        v.c.identity_id, v.c.camera_id, v.c.start_time, v.c.end_time, v.c.tracklet_id, v.c.similarity
    ).where(v.c.identity_id == identity_id)
    lo = None if since is None else _utc(since, "since")
    hi = None if until is None else _utc(until, "until")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"timeline: since {lo.isoformat()} is after until {hi.isoformat()}")
    if lo is not None:
        stmt = stmt.where(v.c.end_time >= lo)
    if hi is not None:
        stmt = stmt.where(v.c.start_time <= hi)
    rows = session.execute(stmt.order_by(v.c.start_time, v.c.tracklet_id))
    return [TimelineEntry(**r._asdict()) for r in rows]


_PASSED_A_THEN_B = (
    sa.text(queries.PASSED_A_THEN_B)
    .bindparams(
        sa.bindparam("camera_a", type_=sa.Text()),
        sa.bindparam("camera_b", type_=sa.Text()),
        sa.bindparam("within_s", type_=sa.Double()),
    )
    .columns(
        identity_id=sa.Integer(),
        tracklet_a=sa.BigInteger(),
        tracklet_b=sa.BigInteger(),
        left_a=UTCDateTime(),
        entered_b=UTCDateTime(),
        gap_s=sa.Double(),
    )
)


def passed_a_then_b(session: Session, camera_a: str, camera_b: str, within_s: float) -> list[Passage]:
    """Who passed camera ``camera_a`` then camera ``camera_b`` within ``within_s`` seconds: one row per
    passage, pairing the identity's last sighting in A before its next sighting in B, when B starts no more
    than ``within_s`` after A ends (overlapping sightings count, with a negative gap). Ordered by the time
    B was entered. Runs ``storage.queries.PASSED_A_THEN_B``, the SQL the schema document shows."""
    _text(camera_a, "camera_a")
    _text(camera_b, "camera_b")
    if camera_a == camera_b:
        raise ValueError(f"passed_a_then_b: camera_a and camera_b are both {camera_a!r}")
    if not (math.isfinite(within_s) and within_s >= 0):
        raise ValueError(f"within_s: expected a finite number of seconds >= 0, got {within_s}")
    rows = session.execute(
        _PASSED_A_THEN_B, {"camera_a": camera_a, "camera_b": camera_b, "within_s": float(within_s)}
    )
    return [Passage(**r._asdict()) for r in rows]


# ----------------------------------------------------------------------------------------------------
# Pictures and per-frame boxes of tracklets

_CHUNK = 500  # ids per IN (...) list: well below SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True, kw_only=True)
class StoredPicture(Picture):
    """A stored picture with its tracklet, camera and identity (None when the tracklet has no sighting)."""

    tracklet_id: int
    identity_id: int | None
    camera_id: str


@dataclass(frozen=True)
class CameraBoxes:
    """The per-frame boxes of one tracklet of a camera, with its identity (None: no sighting yet)."""

    tracklet_id: int
    identity_id: int | None
    session_key: str
    track_id: int
    chunk: int
    track: TrackBoxes


def _tracklet_span(session: Session, tracklet_id: int, caller: str) -> tuple[int, int]:
    t = TrackletRow.__table__
    row = session.execute(sa.select(t.c.first_frame, t.c.last_frame).where(t.c.id == tracklet_id)).first()
    if row is None:
        raise LookupError(f"{caller}: no tracklet with id {tracklet_id}")
    return int(row.first_frame), int(row.last_frame)


def add_pictures(session: Session, tracklet_id: int, pictures: Iterable[Picture]) -> int:
    """Store ``pictures`` (an iterable of :class:`Picture`) of tracklet ``tracklet_id``; returns how many
    were new. Idempotent on ``(tracklet_id, kind, rank)``: a repeat keeps the first picture. Call it in the
    transaction that stores the tracklet's embedding, so that a crash never leaves pictures without it.
    Raises ``LookupError`` for an unknown tracklet, ``ValueError`` when two pictures share a kind and rank."""
    pics = list(pictures)
    for p in pics:
        if not isinstance(p, Picture):
            raise TypeError(f"add_pictures: expected Picture items, got {type(p).__name__}")
    keys = [(p.kind, p.rank) for p in pics]
    if len(set(keys)) != len(keys):
        raise ValueError(f"add_pictures: (kind, rank) repeated in {sorted(keys)}")
    _tracklet_span(session, tracklet_id, "add_pictures")
    if not pics:
        return 0
    table = TrackletPictureRow.__table__
    stmt = (
        _insert(session, table)
        .values(
            [
                {
                    "tracklet_id": int(tracklet_id),
                    "kind": p.kind,
                    "rank": p.rank,
                    "frame_index": p.frame_index,
                    "width": p.width,
                    "height": p.height,
                    "jpeg": p.jpeg,
                }
                for p in pics
            ]
        )
        .on_conflict_do_nothing(index_elements=["tracklet_id", "kind", "rank"])
        .returning(table.c.rank)
    )
    return len(session.execute(stmt).all())


def _pictures(
    session: Session, where: list[Any], kind: str | None, max_rank: int | None
) -> list[StoredPicture]:
    p, t, s = TrackletPictureRow.__table__, TrackletRow.__table__, SightingRow.__table__
    if kind is not None and kind not in PICTURE_KINDS:
        raise ValueError(f"kind: expected one of {PICTURE_KINDS} or None, got {kind!r}")
    stmt = (
        sa.select(
            p.c.tracklet_id,
            s.c.identity_id,
            t.c.camera_id,
            p.c.kind,
            p.c.rank,
            p.c.frame_index,
            p.c.width,
            p.c.height,
            p.c.jpeg,
        )
        .select_from(p.join(t, t.c.id == p.c.tracklet_id).outerjoin(s, s.c.tracklet_id == p.c.tracklet_id))
        .where(*where)
    )
    if kind is not None:
        stmt = stmt.where(p.c.kind == kind)
    if max_rank is not None:
        stmt = stmt.where(p.c.rank <= int(max_rank))
    rows = session.execute(stmt.order_by(t.c.start_posix, p.c.tracklet_id, p.c.kind.desc(), p.c.rank))
    return [
        StoredPicture(
            tracklet_id=int(r.tracklet_id),
            identity_id=None if r.identity_id is None else int(r.identity_id),
            camera_id=r.camera_id,
            kind=r.kind,
            rank=int(r.rank),
            frame_index=int(r.frame_index),
            width=int(r.width),
            height=int(r.height),
            jpeg=bytes(r.jpeg),
        )
        for r in rows
    ]


def pictures_of_tracklet(
    session: Session, tracklet_id: int, *, kind: str | None = None
) -> list[StoredPicture]:
    """The pictures of tracklet ``tracklet_id`` (only ``kind`` ones if given): crops by rank, then the
    attention picture. Empty for a tracklet without pictures or an unknown id."""
    return _pictures(session, [TrackletPictureRow.__table__.c.tracklet_id == tracklet_id], kind, None)


def pictures_of_identity(
    session: Session, identity_id: int, *, kind: str | None = None, max_rank: int | None = None
) -> list[StoredPicture]:
    """The pictures of every tracklet of identity ``identity_id``, by tracklet start time, then tracklet id,
    crops by rank, then the attention picture. ``kind`` keeps one kind; ``max_rank`` keeps ranks up to it
    (``max_rank=0``: the best crop and the attention picture of each tracklet). Empty for an unknown id."""
    return _pictures(session, [SightingRow.__table__.c.identity_id == identity_id], kind, max_rank)


def add_boxes(session: Session, tracklet_id: int, track: TrackBoxes) -> bool:
    """Store the per-frame boxes ``track`` of tracklet ``tracklet_id`` (``tracklet_boxes``, the layout of
    :mod:`storage.boxes`). Idempotent on the tracklet: a repeat keeps the first boxes. Returns True if they
    were new. Raises ``LookupError`` for an unknown tracklet and ``ValueError`` when a frame lies outside the
    tracklet's ``first_frame..last_frame``."""
    if not isinstance(track, TrackBoxes):
        raise TypeError(f"add_boxes: expected TrackBoxes, got {type(track).__name__}")
    first, last = _tracklet_span(session, tracklet_id, "add_boxes")
    if len(track) and (track.frames[0] < first or track.frames[-1] > last):
        raise ValueError(
            f"add_boxes: frames {int(track.frames[0])}..{int(track.frames[-1])} outside tracklet "
            f"{tracklet_id}'s frames {first}..{last}"
        )
    table = TrackletBoxesRow.__table__
    stmt = (
        _insert(session, table)
        .values(
            tracklet_id=int(tracklet_id), num_boxes=len(track), boxes=encode_boxes(track, first_frame=first)
        )
        .on_conflict_do_nothing(index_elements=["tracklet_id"])
        .returning(table.c.tracklet_id)
    )
    return session.execute(stmt).first() is not None


def boxes_of_tracklet(session: Session, tracklet_id: int) -> TrackBoxes | None:
    """The per-frame boxes of tracklet ``tracklet_id``, or None when none were stored (or no such id)."""
    b, t = TrackletBoxesRow.__table__, TrackletRow.__table__
    row = session.execute(
        sa.select(b.c.boxes, t.c.first_frame)
        .select_from(b.join(t, t.c.id == b.c.tracklet_id))
        .where(b.c.tracklet_id == tracklet_id)
    ).first()
    return None if row is None else decode_boxes(bytes(row.boxes), first_frame=int(row.first_frame))


def camera_runs(session: Session, camera_id: str) -> list[str]:
    """The ``session_key`` of every camera worker run with tracklets in ``camera_id``, earliest first."""
    t = TrackletRow.__table__
    first = sa.func.min(t.c.start_posix)
    rows = session.execute(
        sa.select(t.c.session_key, first)
        .where(t.c.camera_id == camera_id)
        .group_by(t.c.session_key)
        .order_by(first, t.c.session_key)
    )
    return [r.session_key for r in rows]


def boxes_of_camera(
    session: Session,
    camera_id: str,
    *,
    session_key: str | None = None,
    since: Instant | None = None,
    until: Instant | None = None,
    frames: tuple[int, int] | None = None,
    assigned_only: bool = False,
) -> list[CameraBoxes]:
    """The per-frame boxes of the tracklets of ``camera_id`` that have stored boxes, with their identity,
    by start time then tracklet id.

    ``session_key``: only that camera worker run. ``since``/``until``: only tracklets whose interval
    overlaps ``[since, until]`` (whole tracklets: per-frame times are not stored). ``frames=(lo, hi)``: only
    the boxes of frames ``lo..hi`` (inclusive; frame indices count per run, so give ``session_key`` too
    when the camera had several runs); tracklets with no box left are dropped. ``assigned_only``: only
    tracklets with a sighting. Raises ``ValueError`` for a reversed window or frame range.
    """
    b, t, s = TrackletBoxesRow.__table__, TrackletRow.__table__, SightingRow.__table__
    stmt = (
        sa.select(
            t.c.id, s.c.identity_id, t.c.session_key, t.c.track_id, t.c.chunk, t.c.first_frame, b.c.boxes
        )
        .select_from(b.join(t, t.c.id == b.c.tracklet_id).outerjoin(s, s.c.tracklet_id == t.c.id))
        .where(t.c.camera_id == camera_id)
    )
    if session_key is not None:
        stmt = stmt.where(t.c.session_key == session_key)
    lo = None if since is None else _posix(since, "since")
    hi = None if until is None else _posix(until, "until")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"boxes_of_camera: since {lo} is after until {hi}")
    if lo is not None:
        stmt = stmt.where(t.c.end_posix >= lo)
    if hi is not None:
        stmt = stmt.where(t.c.start_posix <= hi)
    if frames is not None:
        f_lo, f_hi = int(frames[0]), int(frames[1])
        if f_lo > f_hi:
            raise ValueError(f"boxes_of_camera: frames {f_lo}..{f_hi} reversed")
        stmt = stmt.where(t.c.last_frame >= f_lo, t.c.first_frame <= f_hi)
    if assigned_only:
        stmt = stmt.where(s.c.identity_id.is_not(None))
    out: list[CameraBoxes] = []
    for r in session.execute(stmt.order_by(t.c.start_posix, t.c.id)):
        track = decode_boxes(bytes(r.boxes), first_frame=int(r.first_frame))
        if frames is not None:
            keep = (track.frames >= f_lo) & (track.frames <= f_hi)
            if not keep.any():
                continue
            track = TrackBoxes(track.frames[keep], track.boxes[keep])
        out.append(
            CameraBoxes(
                tracklet_id=int(r.id),
                identity_id=None if r.identity_id is None else int(r.identity_id),
                session_key=r.session_key,
                track_id=int(r.track_id),
                chunk=int(r.chunk),
                track=track,
            )
        )
    return out


MOT_COLUMNS = 10


def mot_rows(session: Session, camera_id: str, session_key: str | None = None) -> np.ndarray:
    """MOTChallenge rows of ``camera_id`` whose ids are global identities: (N, 10) float64
    ``frame, identity, x, y, w, h, conf, -1, -1, -1`` with **1-based** frames (stored index + 1), top-left
    ``xywh`` pixel boxes and ``conf`` 1 (per-frame scores are not stored), sorted by frame then identity:
    what ``pipeline.camera.mot_io.write_mot(path, rows)`` writes. Only tracklets with a sighting and stored
    boxes appear. Empty (0, 10) for a camera without any.

    Frame indices restart with every camera worker run, so one file holds one run: ``session_key=None``
    takes the camera's only run and raises ``ValueError`` naming them when it had several (see
    :func:`camera_runs`; export one file per run).
    """
    if session_key is None:
        runs = camera_runs(session, camera_id)
        if len(runs) > 1:
            raise ValueError(
                f"mot_rows: camera {camera_id!r} has {len(runs)} runs {runs}; pass session_key (frames restart per run)"
            )
        if not runs:
            return np.zeros((0, MOT_COLUMNS), np.float64)
        session_key = runs[0]
    parts = [
        (c.identity_id, c.track)
        for c in boxes_of_camera(session, camera_id, session_key=session_key, assigned_only=True)
    ]
    n = sum(len(track) for _, track in parts)
    rows = np.full((n, MOT_COLUMNS), -1.0, np.float64)
    i = 0
    for identity_id, track in parts:
        j = i + len(track)
        b = track.boxes.astype(np.float64)
        rows[i:j, 0] = track.frames + 1
        rows[i:j, 1] = identity_id
        rows[i:j, 2:4] = b[:, 0:2]
        rows[i:j, 4:6] = b[:, 2:4] - b[:, 0:2]
        rows[i:j, 6] = 1.0
        i = j
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


# ----------------------------------------------------------------------------------------------------
# Forgetting a person and retention


@dataclass(frozen=True)
class ForgetReport:
    """What :func:`forget_identity` deleted: the identity, its tracklets (drop them and the identity from a
    running matcher's gallery) and the rows deleted per table (``deleted``, table name -> rows).
    ``already_retired``: the id had been forgotten or pruned before; nothing was left to delete."""

    identity_id: int
    tracklet_ids: tuple[int, ...]
    deleted: dict[str, int]
    already_retired: bool = False


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_before` deleted: every tracklet that ended before ``cutoff`` (with its rows in every
    table), ``identity_ids`` the identities left without any sighting (deleted and retired), and
    ``updated_identity_ids`` those that lost some tracklets but keep others (statistics refreshed). A running
    matcher drops ``tracklet_ids`` and ``identity_ids`` from its gallery. ``deleted``: rows per table."""

    cutoff: datetime
    tracklet_ids: tuple[int, ...]
    identity_ids: tuple[int, ...]
    updated_identity_ids: tuple[int, ...]
    deleted: dict[str, int]


def _referencing(column: sa.Column) -> list[sa.Column]:
    """Every column of the schema with a foreign key to ``column``, children first. Read from the metadata,
    so a table added later is deleted with what it refers to without changing this module."""
    found = [
        fk.parent
        for table in reversed(Base.metadata.sorted_tables)
        for fk in table.foreign_keys
        if fk.column is column
    ]
    return found


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _delete_where_in(session: Session, column: sa.Column, ids: list[int], deleted: dict[str, int]) -> None:
    for part in _chunks(ids):
        n = session.execute(sa.delete(column.table).where(column.in_(part))).rowcount
        deleted[column.table.name] = deleted.get(column.table.name, 0) + max(int(n or 0), 0)


def _delete_tracklets(session: Session, ids: list[int], deleted: dict[str, int]) -> None:
    """Delete tracklets ``ids`` and every row that refers to them (embeddings, sightings, pictures, boxes,
    and whatever a later table adds). The cascades would do it too; deleting explicitly counts the rows and
    does not depend on SQLite's ``foreign_keys`` pragma."""
    tracklet_id = TrackletRow.__table__.c.id
    for column in _referencing(tracklet_id):
        _delete_where_in(session, column, ids, deleted)
    _delete_where_in(session, tracklet_id, ids, deleted)


def _delete_identities(
    session: Session, ids: list[int], reason: str, now: datetime, deleted: dict[str, int]
) -> None:
    """Delete identities ``ids`` (and any row still referring to them) and retire their ids."""
    identity_id = IdentityRow.__table__.c.id
    for column in _referencing(identity_id):
        _delete_where_in(session, column, ids, deleted)
    _delete_where_in(session, identity_id, ids, deleted)
    retired = RetiredIdentityRow.__table__
    for part in _chunks(ids):
        session.execute(
            _insert(session, retired)
            .values([{"identity_id": i, "reason": reason, "retired_at": now} for i in part])
            .on_conflict_do_nothing(index_elements=["identity_id"])
        )


def _lock_identities(session: Session, ids: list[int]) -> list[int]:
    """Lock the rows of identities ``ids`` against a concurrent matcher (PostgreSQL ``FOR UPDATE``, in id
    order; SQLite already serialises writers) and return those that exist."""
    identities = IdentityRow.__table__
    found: list[int] = []
    for part in _chunks(sorted(ids)):
        found += [
            int(i)
            for i in session.execute(
                sa.select(identities.c.id)
                .where(identities.c.id.in_(part))
                .order_by(identities.c.id)
                .with_for_update()
            ).scalars()
        ]
    return found


def forget_identity(session: Session, identity_id: int, *, now: Instant | None = None) -> ForgetReport:
    """Delete every row of identity ``identity_id``: its sightings, its tracklets with their embeddings,
    pictures and boxes (every table that refers to a tracklet), and the identity itself; then retire the id
    (``retired_identities``, reason ``'forgotten'``, at ``now``, default the current time) so that it is
    never handed out again (:func:`max_identity_id` counts it, :func:`ensure_identity` refuses it).

    Idempotent: forgetting a retired id deletes nothing and says ``already_retired``. Raises
    ``LookupError`` for an id that never existed. On PostgreSQL the identity row is locked first, so a
    matcher adding a sighting to it at the same time either commits before (and its tracklet is deleted
    too) or fails afterwards. Never commits.
    """
    if isinstance(identity_id, bool) or int(identity_id) != identity_id or identity_id < 0:
        raise ValueError(f"identity_id: expected an integer >= 0, got {identity_id!r}")
    identity_id = int(identity_id)
    when = datetime.now(UTC) if now is None else _utc(now, "now")
    if not _lock_identities(session, [identity_id]):
        if is_retired(session, identity_id):
            return ForgetReport(identity_id, (), {}, already_retired=True)
        raise LookupError(f"forget_identity: no identity with id {identity_id}")
    s = SightingRow.__table__
    tracklet_ids = [
        int(t)
        for t in session.execute(
            sa.select(s.c.tracklet_id).where(s.c.identity_id == identity_id).order_by(s.c.tracklet_id)
        ).scalars()
    ]
    deleted: dict[str, int] = {}
    _delete_tracklets(session, tracklet_ids, deleted)
    _delete_identities(session, [identity_id], "forgotten", when, deleted)
    log.info("forgot identity %d: %s", identity_id, deleted)
    return ForgetReport(identity_id, tuple(tracklet_ids), deleted)


def prune_before(session: Session, cutoff: Instant, *, now: Instant | None = None) -> PruneReport:
    """Retention: delete every tracklet that ended before ``cutoff`` (``end_time < cutoff``, assigned or
    not) with every row that refers to it (embeddings, sightings, pictures, boxes), then every identity left
    without a sighting, whose id is retired (reason ``'pruned'``, at ``now``, default the current time) so
    it is never reused. Identities that keep some sightings get their statistics refreshed. Cameras, their
    health history and ``match_progress`` hold no person data and are kept. Never commits.
    """
    limit = _posix(cutoff, "cutoff")
    when = datetime.now(UTC) if now is None else _utc(now, "now")
    t, s, i = TrackletRow.__table__, SightingRow.__table__, IdentityRow.__table__
    tracklet_ids = [
        int(x)
        for x in session.execute(sa.select(t.c.id).where(t.c.end_posix < limit).order_by(t.c.id)).scalars()
    ]
    touched: set[int] = set()
    for part in _chunks(tracklet_ids):
        touched.update(
            int(x)
            for x in session.execute(
                sa.select(s.c.identity_id).where(s.c.tracklet_id.in_(part)).distinct()
            ).scalars()
        )
    # identities without any sighting at all (none should exist, but they are no one's any more either)
    touched.update(
        int(x)
        for x in session.execute(
            sa.select(i.c.id).where(~sa.exists().where(s.c.identity_id == i.c.id))
        ).scalars()
    )
    deleted: dict[str, int] = {}
    _delete_tracklets(session, tracklet_ids, deleted)
    # Lock, then look: a sighting a concurrent matcher committed meanwhile keeps its identity alive.
    candidates = _lock_identities(session, sorted(touched))
    alive: set[int] = set()
    for part in _chunks(candidates):
        alive.update(
            int(x)
            for x in session.execute(
                sa.select(s.c.identity_id).where(s.c.identity_id.in_(part)).distinct()
            ).scalars()
        )
    gone = sorted(set(candidates) - alive)
    _delete_identities(session, gone, "pruned", when, deleted)
    for identity_id in sorted(alive):
        update_identity_stats(session, identity_id)
    if tracklet_ids or gone:
        log.info(
            "pruned %d tracklet(s) that ended before %s and %d identit(ies): %s",
            len(tracklet_ids),
            _utc(limit, "cutoff").isoformat(),
            len(gone),
            deleted,
        )
    return PruneReport(
        cutoff=_utc(limit, "cutoff"),
        tracklet_ids=tuple(tracklet_ids),
        identity_ids=tuple(gone),
        updated_identity_ids=tuple(sorted(alive)),
        deleted=deleted,
    )
