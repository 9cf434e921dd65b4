"""A camera's ``crop``: the rectangle of its source's frames that the camera sees.

One recorded or live view can feed several cameras (a wide view split into zones): each camera opens the same
source with its own ``crop = (x1, y1, x2, y2)``, integer pixels of the source's (upright) frame, ``x1, y1``
inclusive and ``x2, y2`` exclusive, so the camera's frames are ``image[y1:y2, x1:x2]``, of size
``(x2 - x1) x (y2 - y1)``. Everything downstream (detector, tracker, tracklet boxes, ``roi``) works in the
pixels of the cropped view.

Pure and import-light on purpose (no OpenCV, no NumPy): the config schema imports :func:`check_crop` to
validate ``cameras[].crop`` at load, and the frame sources use the same functions at open time.
"""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["Crop", "check_crop", "check_crop_fits", "crop_size"]

Crop = tuple[int, int, int, int]


def check_crop(crop: Any) -> Crop:
    """``crop`` as a tuple of four ints ``(x1, y1, x2, y2)``, checked.

    Takes any sequence of four integers (a YAML list, a tuple, NumPy integers). Raises ``ValueError`` (one
    line, without a key: the caller adds the camera or config key) when it is not four integers (``bool``
    and floats such as ``10.0`` are refused), when ``x1`` or ``y1`` is negative, or when ``x1 >= x2`` or
    ``y1 >= y2`` (an empty view). Whether it fits a frame is :func:`check_crop_fits`.
    """
    if isinstance(crop, str | bytes) or not hasattr(crop, "__len__") or len(crop) != 4:
        raise ValueError(f"expected [x1, y1, x2, y2] (4 integer pixels), got {crop!r}")
    values = []
    for name, v in zip(("x1", "y1", "x2", "y2"), crop, strict=True):
        if isinstance(v, bool):
            raise ValueError(f"{name} must be an integer pixel, got {v!r}")
        try:
            values.append(operator.index(v))  # ints and NumPy integers; refuses floats, even 10.0
        except TypeError:
            raise ValueError(f"{name} must be an integer pixel, got {v!r}") from None
    x1, y1, x2, y2 = values
    if x1 < 0 or y1 < 0:
        raise ValueError(f"x1 and y1 must be >= 0, got [{x1}, {y1}, {x2}, {y2}]")
    if x1 >= x2 or y1 >= y2:
        raise ValueError(f"needs x1 < x2 and y1 < y2 (x2, y2 exclusive), got [{x1}, {y1}, {x2}, {y2}]")
    return x1, y1, x2, y2


def crop_size(crop: Crop) -> tuple[int, int]:
    """``(width, height)`` of the view a checked ``crop`` keeps."""
    x1, y1, x2, y2 = crop
    return x2 - x1, y2 - y1


def check_crop_fits(crop: Crop, width: int, height: int) -> None:
    """Raise ``ValueError`` when a checked ``crop`` does not lie inside a ``width`` x ``height`` frame
    (``x2 > width`` or ``y2 > height``); the message names the crop and the frame size."""
    x1, y1, x2, y2 = crop
    if x2 > width or y2 > height:
        over = [f"x2 {x2} > width {width}"] * (x2 > width) + [f"y2 {y2} > height {height}"] * (y2 > height)
        raise ValueError(
            f"crop [{x1}, {y1}, {x2}, {y2}] does not fit the {width}x{height} frame ({', '.join(over)})"
        )
