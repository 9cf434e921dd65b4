"""Pictures and per-frame boxes of tracklets: storing and reading crops and attention pictures, the
compact per-frame boxes (:mod:`storage.boxes`), a camera's boxes with their identities, its worker runs,
and MOTChallenge rows with global identities."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from common.pictures import PICTURE_KINDS, Picture
from storage.boxes import TrackBoxes, decode_boxes, encode_boxes
from storage.models import SightingRow, TrackletBoxesRow, TrackletPictureRow, TrackletRow
from storage.repository._common import Instant, _insert, _overlapping, _posix


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
    stmt = _overlapping(stmt, t.c.start_posix, t.c.end_posix, since, until, _posix, "boxes_of_camera")
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
