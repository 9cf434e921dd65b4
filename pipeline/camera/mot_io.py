"""MOTChallenge text files and the tracklet JSON-lines record: reading and writing at the edge.

MOT rows are ``frame, id, x, y, w, h, conf, x3d, y3d, z3d`` with **1-based** frames and top-left ``xywh``
pixel boxes. Our messages use 0-based ``frame_index`` and ``xyxy`` boxes; the conversion happens here and
nowhere else. Ground-truth files (MOT17 ``gt.txt``) have 9 columns instead: ``frame, id, x, y, w, h,
consider_flag, class, visibility``; :func:`read_mot` reads both.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np

from pipeline.transport.messages import Tracklet, Tracks

__all__ = ["tracks_to_mot_rows", "append_mot_rows", "write_mot", "read_mot", "tracklet_to_json", "iso_utc"]

MOT_COLUMNS = 10


def tracks_to_mot_rows(frame_index: int, tracks: Tracks) -> np.ndarray:
    """(M, 10) float64 MOT rows for one frame's tracks: frame ``frame_index + 1``, ``xyxy -> xywh``, the
    tracker's score as conf, and ``-1, -1, -1``. Rows follow the order of ``tracks``."""
    m = len(tracks)
    rows = np.full((m, MOT_COLUMNS), -1.0, np.float64)
    b = tracks.boxes.astype(np.float64)
    rows[:, 0] = frame_index + 1
    rows[:, 1] = tracks.track_ids
    rows[:, 2:4] = b[:, 0:2]
    rows[:, 4:6] = b[:, 2:4] - b[:, 0:2]
    rows[:, 6] = tracks.scores
    return rows


def _format_rows(rows: np.ndarray) -> str:
    return "".join(
        f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{r[6]:.4f},-1,-1,-1\n"
        for r in rows
    )


def append_mot_rows(fh: TextIO, frame_index: int, tracks: Tracks) -> int:
    """Write one frame's tracks to an open text file as MOT lines; return the number of lines written.

    Boxes and conf are rounded to 2 and 4 decimals. Call it once per frame, in frame order, to stream a
    sequence's result file while the tracker runs.
    """
    rows = tracks_to_mot_rows(frame_index, tracks)
    fh.write(_format_rows(rows))
    return int(rows.shape[0])


def write_mot(path: str | os.PathLike[str], rows: np.ndarray) -> None:
    """Write MOT rows (N, C >= 7: ``frame, id, x, y, w, h, conf, ...``, frames already 1-based, boxes xywh,
    as :func:`read_mot` returns them) to ``path``; columns 8-10 are written as ``-1``. Raises ``ValueError``
    for another shape or non-integral frame / id values."""
    arr = np.asarray(rows, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, MOT_COLUMNS)
    if arr.ndim != 2 or arr.shape[1] < 7:
        raise ValueError(f"write_mot rows: expected shape (N, >=7), got {arr.shape}")
    if not (np.all(arr[:, :2] == np.round(arr[:, :2])) and np.isfinite(arr[:, :7]).all()):
        raise ValueError("write_mot rows: frame and id must be integers and the first 7 columns finite")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(_format_rows(arr))


def read_mot(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a MOT-format text file into an (N, C) float64 array, C being the file's column count (>= 6).

    Blank lines are skipped; an empty file gives shape (0, 10). Raises ``FileNotFoundError`` when absent and
    ``ValueError`` naming ``path:line`` for a non-numeric line or a column count that changes.
    """
    rows: list[list[float]] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            text = line.strip()
            if not text:
                continue
            try:
                values = [float(v) for v in text.split(",")]
            except ValueError:
                raise ValueError(f"{path}:{n}: expected comma-separated numbers, got {text!r}") from None
            if len(values) < 6 or (rows and len(values) != len(rows[0])):
                expected = len(rows[0]) if rows else ">= 6"
                raise ValueError(f"{path}:{n}: expected {expected} columns, got {len(values)}")
            rows.append(values)
    if not rows:
        return np.zeros((0, MOT_COLUMNS), np.float64)
    return np.asarray(rows, dtype=np.float64)


def iso_utc(timestamp: float) -> str:
    """POSIX seconds -> ISO 8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.250Z``."""
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tracklet_to_json(t: Tracklet) -> dict[str, Any]:
    """One line of ``<camera_id>_tracklets.jsonl``: the tracklet's key, span and sizes, no pixels."""
    return {
        "camera": t.camera_id,
        "track_id": int(t.track_id),
        "chunk": int(t.chunk),
        "first_frame": int(t.first_frame),
        "last_frame": int(t.last_frame),
        "start_time": iso_utc(t.start_time),
        "end_time": iso_utc(t.end_time),
        "num_frames": int(t.num_frames),
        "num_crops": len(t),
    }
