"""The CLI's questions, read-only: rows per table, identities seen in several cameras, one identity's
timeline, and who passed camera A then camera B (the schema document's SQL)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import queries
from storage.models import (
    CameraRow,
    EmbeddingRow,
    HealthEventRow,
    IdentityRow,
    RetiredIdentityRow,
    SightingRow,
    TrackletBoxesRow,
    TrackletPictureRow,
    TrackletRow,
    UTCDateTime,
    identity_timeline,
)
from storage.repository._common import Instant, _overlapping, _text, _utc


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
    stmt = _overlapping(stmt, v.c.start_time, v.c.end_time, since, until, _utc, "timeline")
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
