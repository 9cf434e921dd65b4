"""Tracklets and their embeddings: a closed tracklet stored once per natural key
``(camera_id, session_key, track_id, chunk)``, and one embedding per tracklet and model."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import EmbeddingRow, TrackletRow
from storage.repository._common import (
    _VECTOR_DTYPE,
    Instant,
    _ensure_camera,
    _exists,
    _insert,
    _posix,
    _text,
    _utc,
    _vector,
    log,
)

_TRACKLET_KEY = ("camera_id", "session_key", "track_id", "chunk")


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
