"""Drawing tracks on frames, and writing annotated video. Pure pixels: no tracker or message does its own drawing."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.camera.mot_io import iso_utc
from pipeline.transport.messages import Frame, Tracks


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per track id (golden-ratio hue steps)."""
    hue = int((track_id * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_tracks(frame: Frame, tracks: Tracks, *, labels: dict[int, str] | None = None) -> np.ndarray:
    """A copy of ``frame.image`` with each track's box, its id (or ``labels[id]``) and a time stamp header."""
    img = frame.image.copy()
    for tid, box in zip(tracks.track_ids.tolist(), tracks.boxes, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = track_color(tid)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        text = labels.get(tid, str(tid)) if labels else str(tid)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.rectangle(img, (x1, max(0, y1 - th - 6)), (x1 + tw + 4, y1), color, -1)
        cv2.putText(img, text, (x1 + 2, y1 - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    header = f"{frame.camera_id}  #{frame.frame_index}  {iso_utc(frame.timestamp)}"
    cv2.putText(img, header, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, header, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return img


class AnnotatedVideoWriter:
    """One annotated MP4 per camera, opened lazily at the first frame (its size is known only then)."""

    def __init__(self, out_dir: str | Path, fps: dict[str, float]):
        self.out = Path(out_dir)
        self.fps = fps
        self._writers: dict[str, cv2.VideoWriter] = {}

    def write(self, frame: Frame, tracks: Tracks) -> None:
        w = self._writers.get(frame.camera_id)
        if w is None:
            path = self.out / f"{frame.camera_id}.mp4"
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            w = cv2.VideoWriter(
                str(path), fourcc, self.fps.get(frame.camera_id) or 10.0, (frame.width, frame.height)
            )
            if not w.isOpened():
                raise OSError(f"camera {frame.camera_id!r}: cannot write video {path}")
            self._writers[frame.camera_id] = w
        w.write(draw_tracks(frame, tracks))

    def close(self) -> None:
        for w in self._writers.values():
            w.release()
        self._writers.clear()
