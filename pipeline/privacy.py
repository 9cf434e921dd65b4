"""Head blurring (``privacy.blur_heads``): a documented heuristic on the person box, no face detector.

The heuristic: in an upright person box ``[x1, y1, x2, y2]`` the head lies in the top fifth of the box
height (:data:`HEAD_FRACTION`; an adult's head is about 1/7 to 1/8 of the body, and detector boxes have a
margin above it), over the box's full width. That band is replaced by a Gaussian blur whose sigma is half
the band's larger side, strong enough that the band becomes a smooth colour gradient and a face in it is
unrecognisable. It misses heads that are not at the top of the box (a person bending over or lying down, a
box cut by the frame's top edge that holds only legs) and blurs a raised arm or whatever is behind the
head; it is a cheap safeguard for stored pictures and rendered video, not a guarantee.

Pure pixels: takes BGR (or grey) ``uint8`` images and returns new ones; only the band's pixels change, every
other pixel is copied byte for byte. Used by ``pipeline.tools.render`` (rendered video) and by the re-ID
worker for the whole-person crops it stores (:func:`blur_crop_head`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["HEAD_FRACTION", "blur_crop_head", "blur_head", "blur_heads", "head_region"]

HEAD_FRACTION = 0.2  # the top fifth of a person box is taken as the head


def head_region(
    box: Sequence[float], image_size: tuple[int, int], *, fraction: float = HEAD_FRACTION
) -> tuple[int, int, int, int] | None:
    """The head band of person ``box`` ``[x1, y1, x2, y2]`` (pixels, origin top left) as integer
    ``(x1, y1, x2, y2)`` (x2, y2 exclusive) clipped to an image of ``image_size`` ``(width, height)``:
    the box's full width and its top ``fraction`` of height (at least one pixel row). None when the band
    lies outside the image or the box is empty. Raises ``ValueError`` for a box that is not 4 finite numbers
    or a fraction outside (0, 1]."""
    if len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        raise ValueError(f"box: expected 4 finite numbers [x1, y1, x2, y2], got {box!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected 0 < fraction <= 1, got {fraction!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        return None
    width, height = image_size
    band = max(1, math.ceil((y2 - y1) * fraction))
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(width, math.ceil(x2)), min(height, math.floor(y1) + band)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def _blur_in_place(image: np.ndarray, region: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = region
    band = np.ascontiguousarray(image[y1:y2, x1:x2])  # blurred on its own: nothing outside leaks in or out
    sigma = max(x2 - x1, y2 - y1) / 2
    image[y1:y2, x1:x2] = cv2.GaussianBlur(band, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)


def blur_heads(
    image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]], *, fraction: float = HEAD_FRACTION
) -> np.ndarray:
    """A copy of ``image`` ((H, W, 3) or (H, W) ``uint8``) with the head band (:func:`head_region`) of each
    person box of ``boxes`` ((N, 4) ``[x1, y1, x2, y2]`` pixels; N may be 0) blurred. Boxes outside the image
    change nothing. Raises ``ValueError`` for another image or box shape."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"image: expected (H, W, 3) or (H, W) uint8, got {getattr(image, 'shape', type(image).__name__)} "
            f"{getattr(image, 'dtype', '')}"
        )
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (N, 4), got {arr.shape}")
    out = image.copy()
    size = (image.shape[1], image.shape[0])
    for box in arr:
        region = head_region(box, size, fraction=fraction)
        if region is not None:
            _blur_in_place(out, region)
    return out


def blur_head(image: np.ndarray, box: Sequence[float], *, fraction: float = HEAD_FRACTION) -> np.ndarray:
    """A copy of ``image`` with the head band of the one person ``box`` blurred (see :func:`blur_heads`)."""
    return blur_heads(image, [box], fraction=fraction)


def blur_crop_head(crop: np.ndarray, *, fraction: float = HEAD_FRACTION) -> np.ndarray:
    """A copy of a whole-person crop (the person box resized to the crop) with its top ``fraction`` blurred:
    what the re-ID worker stores when ``privacy.blur_heads`` is on."""
    if not isinstance(crop, np.ndarray) or crop.ndim not in (2, 3):
        raise ValueError(f"crop: expected an (H, W, 3) or (H, W) image, got {getattr(crop, 'shape', crop)!r}")
    return blur_head(crop, (0, 0, crop.shape[1], crop.shape[0]), fraction=fraction)
