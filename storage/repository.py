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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.redact import redact_text, redact_url
from storage import queries
from storage.db import StoreError
from storage.models import (
    HEALTH_EVENTS,
    CameraRow,
    EmbeddingRow,
    HealthEventRow,
    IdentityRow,
    MatchProgressRow,
    SightingRow,
    TrackletRow,
    UTCDateTime,
    identity_timeline,
)

__all__ = [
    "GalleryEntry",
    "IdentitySummary",
    "StreamProgress",
    "Instant",
    "Passage",
    "TimelineEntry",
    "TrackletLike",
    "add_embedding",
    "add_health_event",
    "add_sighting",
    "add_tracklet",
    "add_tracklet_from",
    "counts",
    "ensure_identity",
    "list_identities",
    "load_gallery",
    "load_progress",
    "max_identity_id",
    "passed_a_then_b",
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
    session: Session, camera_id: str, source: str | int | None, start_time: Instant | None
) -> None:
    """Create or update camera ``camera_id`` with its ``source`` (stored with its password redacted) and
    ``start_time`` (when its frame clock starts; None = unknown). Health columns are left as they are."""
    _text(camera_id, "camera_id")
    values = {
        "id": camera_id,
        "source": None if source is None else redact_url(str(source)),
        "start_time": None if start_time is None else _utc(start_time, "start_time"),
    }
    stmt = _insert(session, CameraRow.__table__).values(**values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={"source": stmt.excluded.source, "start_time": stmt.excluded.start_time},
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


def ensure_identity(session: Session, identity_id: int, *, created_at: Instant) -> bool:
    """Create identity ``identity_id`` (chosen by the matcher, >= 0) if it does not exist. Returns True if it
    was created; an existing identity is left unchanged."""
    if isinstance(identity_id, bool) or int(identity_id) != identity_id or identity_id < 0:
        raise ValueError(f"identity_id: expected an integer >= 0, got {identity_id!r}")
    table = IdentityRow.__table__
    stmt = (
        _insert(session, table)
        .values(id=int(identity_id), created_at=_utc(created_at, "created_at"))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    return session.execute(stmt).first() is not None


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
    """The largest identity id stored, or 0 when there is none (so ``max_identity_id(s) + 1`` is free)."""
    return int(
        session.execute(sa.select(sa.func.coalesce(sa.func.max(IdentityRow.__table__.c.id), 0))).scalar_one()
    )


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


_COUNTED = (CameraRow, HealthEventRow, TrackletRow, EmbeddingRow, IdentityRow, SightingRow)


def counts(session: Session) -> dict[str, int]:
    """Rows per table, keyed by table name (``cameras``, ``camera_health_events``, ``tracklets``,
    ``embeddings``, ``identities``, ``sightings``)."""
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
