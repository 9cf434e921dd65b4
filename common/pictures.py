"""The one record of a tracklet's picture, shared by the messages that carry it and the store that keeps it.

A leaf module (numpy only), so the transport (``pipeline.transport.messages``) and the store
(``storage.repository``) use the same validated record without either importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PICTURE_KINDS", "Picture"]

# One of the best crops by temporal attention, or a crop with the attention heatmaps drawn over it.
PICTURE_KINDS = ("crop", "attention")
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


@dataclass(frozen=True)
class Picture:
    """One JPEG picture of a tracklet (docs/schema.md, ``tracklet_pictures``).

    ``kind``: ``'crop'`` (one of its best crops by temporal attention, ``rank`` 0 = the best) or
    ``'attention'`` (a crop with the K part heatmaps drawn over it, normally one, rank 0). ``frame_index``: the
    frame it was cropped from (0-based per camera worker run, like ``tracklets.first_frame``); ``width`` x
    ``height``: the picture's size in pixels; ``jpeg``: the complete JPEG file (``bytes``, starting with
    ``FF D8 FF`` and ending with ``FF D9``). Raises ``ValueError`` naming the field on construction.
    """

    kind: str
    rank: int
    frame_index: int
    width: int
    height: int
    jpeg: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.kind not in PICTURE_KINDS:
            raise ValueError(f"Picture.kind: expected one of {PICTURE_KINDS}, got {self.kind!r}")
        for name, low in (("rank", 0), ("frame_index", 0), ("width", 1), ("height", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                raise ValueError(f"Picture.{name}: expected an int >= {low}, got {v!r}")
            object.__setattr__(self, name, int(v))
        if not isinstance(self.jpeg, bytes) or self.jpeg[:3] != _JPEG_START or self.jpeg[-2:] != _JPEG_END:
            raise ValueError("Picture.jpeg: expected the bytes of a complete JPEG file")
