"""Drawing tracks and global identities on frames, and writing annotated video. Pure pixels: no tracker or message does its own drawing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.camera.mot_io import iso_utc
from pipeline.transport.messages import Frame, Tracks

BGR = tuple[int, int, int]

UNASSIGNED_COLOR: BGR = (160, 160, 160)  # grey: a tracklet the matcher has not (yet) given an identity


def _golden_hue_color(n: int, saturation: int) -> BGR:
    hue = int((n * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, saturation, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def track_color(track_id: int) -> BGR:
    """A stable, well-spread BGR colour per track id (golden-ratio hue steps)."""
    return _golden_hue_color(track_id, 200)


def identity_color(identity_id: int | None) -> BGR:
    """The BGR colour of global identity ``identity_id`` in every camera's video: a function of the id alone
    (golden-ratio hue steps, full saturation, so consecutive ids differ strongly and colours survive video
    compression). ``None`` (no identity yet) is :data:`UNASSIGNED_COLOR`."""
    if identity_id is None:
        return UNASSIGNED_COLOR
    return _golden_hue_color(int(identity_id), 255)


def identity_label(identity_id: int | None) -> str:
    """``"id 17"``; ``"?"`` for a box without identity."""
    return "?" if identity_id is None else f"id {int(identity_id)}"


def draw_identities(
    image: np.ndarray,
    boxes: np.ndarray,
    identity_ids: Sequence[int | None],
    *,
    thickness: int = 3,
) -> np.ndarray:
    """A copy of ``image`` ((H, W, 3) uint8 BGR) with each box of ``boxes`` ((N, 4) ``[x1, y1, x2, y2]``
    pixels; N may be 0) drawn in its identity's colour (:func:`identity_color`) with a label ``"id 17"``
    on a filled tag above it (inside the box when the box touches the top edge). The border is
    ``thickness`` pixels inside-and-outside the box edge (OpenCV's rectangle). Raises ``ValueError`` when
    the number of ids is not N."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(identity_ids) != arr.shape[0]:
        raise ValueError(f"draw_identities: {arr.shape[0]} boxes but {len(identity_ids)} identity ids")
    img = image.copy()
    for box, identity_id in zip(arr, identity_ids, strict=True):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        color = identity_color(identity_id)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness)
        text = identity_label(identity_id)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = y1 - th - 6 if y1 - th - 6 >= 0 else y1
        cv2.rectangle(img, (x1, top), (x1 + tw + 4, top + th + 6), color, -1)
        cv2.putText(
            img, text, (x1 + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    return img


def draw_header(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with ``text`` written at its top left, white on a black outline (modified in place and
    returned)."""
    cv2.putText(image, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return image


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
    return draw_header(img, f"{frame.camera_id}  #{frame.frame_index}  {iso_utc(frame.timestamp)}")


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
