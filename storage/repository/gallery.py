"""What a restarting matcher reads back: its gallery (every assigned tracklet with its embedding) and how
far it had read each camera worker run (``match_progress``), which it also saves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import EmbeddingRow, MatchProgressRow, SightingRow, TrackletRow
from storage.repository._common import _VECTOR_DTYPE, _insert, _text


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
