"""The binary layout of ``tracklet_boxes.boxes``: a tracklet's per-frame boxes as one compact blob.

One record per observed frame, :data:`storage.models.BOX_RECORD_BYTES` (20) bytes, little-endian, in frame
order::

    offset  type     meaning
    0       int32    frame index minus the tracklet's ``first_frame`` (0, 1, ...; strictly increasing)
    4       float32  x1 (pixels of the camera's original frame, origin top left)
    8       float32  y1
    12      float32  x2
    16      float32  y2

Frames are stored relative to ``first_frame`` so that a camera worker running for years never overflows the
int32. In Python: ``numpy.frombuffer(blob, BOX_DTYPE)``, or :func:`decode_boxes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from storage.models import BOX_RECORD_BYTES

__all__ = ["BOX_DTYPE", "TrackBoxes", "decode_boxes", "encode_boxes"]

BOX_DTYPE = np.dtype([("frame", "<i4"), ("x1", "<f4"), ("y1", "<f4"), ("x2", "<f4"), ("y2", "<f4")])
assert BOX_DTYPE.itemsize == BOX_RECORD_BYTES
_MAX_OFFSET = np.iinfo(np.int32).max


@dataclass(frozen=True)
class TrackBoxes:
    """Per-frame boxes of one tracklet: ``frames`` (N,) int64 absolute frame indices, strictly increasing;
    ``boxes`` (N, 4) float32 ``[x1, y1, x2, y2]`` pixels. Validated on construction (``ValueError``)."""

    frames: np.ndarray = field(repr=False)
    boxes: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.size == 0:
            frames = frames.reshape(0)
        boxes = np.asarray(self.boxes, dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if frames.ndim != 1 or not (frames.dtype.kind in "iu" or frames.size == 0):
            raise ValueError(f"TrackBoxes.frames: expected (N,) integers, got {frames.shape} {frames.dtype}")
        n = frames.shape[0]
        if boxes.shape != (n, 4):
            raise ValueError(f"TrackBoxes.boxes: expected shape ({n}, 4), got {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError("TrackBoxes.boxes: expected finite values")
        frames = frames.astype(np.int64)
        if n > 1 and not (np.diff(frames) > 0).all():
            raise ValueError(
                "TrackBoxes.frames: expected strictly increasing frame indices (one box per frame)"
            )
        object.__setattr__(self, "frames", np.ascontiguousarray(frames))
        object.__setattr__(self, "boxes", np.ascontiguousarray(boxes))

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def encode_boxes(track: TrackBoxes, *, first_frame: int) -> bytes:
    """``track`` as the blob described above (``20 * len(track)`` bytes). Raises ``ValueError`` when a frame
    is before ``first_frame`` or more than 2**31 - 1 frames after it."""
    offsets = track.frames - int(first_frame)
    if len(track) and (offsets[0] < 0 or offsets[-1] > _MAX_OFFSET):
        raise ValueError(
            f"boxes: frames {int(track.frames[0])}..{int(track.frames[-1])} do not fit an int32 offset from "
            f"first_frame {first_frame}"
        )
    records = np.empty(len(track), BOX_DTYPE)
    records["frame"] = offsets
    for i, name in enumerate(("x1", "y1", "x2", "y2")):
        records[name] = track.boxes[:, i]
    return records.tobytes()


def decode_boxes(blob: bytes, *, first_frame: int) -> TrackBoxes:
    """The inverse of :func:`encode_boxes` (bit-exact boxes). Raises ``ValueError`` when the blob's length
    is not a multiple of 20 bytes or its frames are not strictly increasing."""
    if len(blob) % BOX_DTYPE.itemsize:
        raise ValueError(
            f"boxes: {len(blob)} bytes is not a whole number of {BOX_DTYPE.itemsize}-byte records"
        )
    records = np.frombuffer(blob, BOX_DTYPE)
    boxes = np.stack([records[n] for n in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float32).reshape(-1, 4)
    return TrackBoxes(records["frame"].astype(np.int64) + int(first_frame), boxes)
