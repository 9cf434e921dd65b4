"""The one rule for what a camera's ``source`` string is; the config schema and the frame sources both use it.

Pure and import-light on purpose: the config imports it to validate ``cameras[].source`` without loading OpenCV.
"""

from __future__ import annotations

import os
from pathlib import PurePath
from typing import Literal

__all__ = ["IMAGE_EXTENSIONS", "LIVE_SCHEMES", "SourceKind", "source_kind"]

SourceKind = Literal["file", "images", "live", "webcam"]
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def source_kind(source: str) -> SourceKind:
    """What ``source`` names, from its text alone (no file system access).

    ``rtsp:// rtsps:// rtmp:// http:// https:// udp:// tcp://`` -> ``"live"``; a digit string (a webcam index)
    -> ``"webcam"``; a path ending in a separator or without a suffix -> ``"images"`` (an image folder);
    any other path -> ``"file"``. Any other ``scheme://`` raises ``ValueError`` naming the schemes accepted.
    """
    if source.isascii() and source.isdigit():
        return "webcam"
    scheme, sep, _ = source.partition("://")
    if sep and scheme.isascii() and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        if scheme.lower() in LIVE_SCHEMES:
            return "live"
        raise ValueError(
            f"unsupported URL scheme {scheme + '://'!r} (expected one of {', '.join(s + '://' for s in LIVE_SCHEMES)})"
        )
    if source.endswith(("/", os.sep)) or not PurePath(source).suffix:
        return "images"
    return "file"
