"""What ffprobe says about a video file (:func:`probe_video` -> :class:`VideoProbe`), and the parsing of its
rates and creation times.

Frame rate of files
    ffprobe's ``avg_frame_rate`` (else ``r_frame_rate``), else OpenCV's ``CAP_PROP_FPS``, else 25. For the raw
    H.264 stream ``people-detection.264`` ffprobe reads 12 fps from the SPS timing info (``time_scale`` 24,
    ``num_units_in_tick`` 1), which is what ``ffmpeg`` itself plays it at (596 frames = 49.7 s); OpenCV
    reports its 25 fps default. With ffprobe we therefore use 12; without it, 25.

Frame count of files
    ffprobe's ``nb_frames``, else ``duration * fps``; for containers that know neither (raw elementary
    streams) ffprobe is run a second time with ``-count_packets``, which reads the whole file at demuxing
    speed (no decoding). Without ffprobe: OpenCV's ``CAP_PROP_FRAME_COUNT`` when positive, else unknown.

Rotation of files
    The clockwise display rotation comes from ffprobe (the display-matrix side data, whose ``rotation`` is
    counter-clockwise, or the legacy ``rotate`` tag), else OpenCV's ``CAP_PROP_ORIENTATION_META`` (see
    :class:`~pipeline.camera.sources.recorded.VideoFileSource`).

Without the ffprobe binary (or when it fails on a file) every probed value falls back to OpenCV as above.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import ffmpeg

from pipeline.camera.sources.base import one_line, to_posix

__all__ = ["VideoProbe", "probe_video"]

log = logging.getLogger(__name__)

_MIN_CREATION_TIME = 315532800.0  # 1980-01-01: earlier creation_time tags are zeroed/unset fields


@dataclass(frozen=True)
class VideoProbe:
    """What ffprobe says about a video file's first video stream; ``None`` fields are unknown.

    ``rotation`` is clockwise degrees in {0, 90, 180, 270}; ``creation_time`` POSIX seconds;
    ``num_frames_exact`` says whether ``num_frames`` was counted rather than derived from the duration.
    """

    fps: float | None
    num_frames: int | None
    num_frames_exact: bool
    rotation: int
    creation_time: float | None
    width: int | None
    height: int | None


def _parse_rate(text: Any) -> float | None:
    """``"30000/1001"`` -> 29.97; None for missing, zero or malformed rates."""
    if not isinstance(text, str) or not text:
        return None
    num, _, den = text.partition("/")
    try:
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _parse_creation_time(text: Any) -> float | None:
    """An ISO 8601 ``creation_time`` tag -> POSIX seconds; None when missing, malformed or before 1980."""
    if not isinstance(text, str):
        return None
    try:
        t = to_posix(datetime.fromisoformat(text.strip()))
    except ValueError:
        return None
    return t if t >= _MIN_CREATION_TIME else None


def probe_video(path: str | Path) -> VideoProbe | None:
    """Probe ``path`` with ffprobe (via ffmpeg-python); None when ffprobe is missing or fails on the file."""
    path = str(path)
    try:
        info = ffmpeg.probe(path, v="error")
    except ffmpeg.Error as e:
        log.debug("ffprobe failed on %s: %s", path, one_line(e.stderr.decode(errors="replace")))
        return None
    except (OSError, ValueError) as e:  # binary missing / not executable, or unparsable JSON
        log.debug("ffprobe unavailable for %s: %s", path, e)
        return None
    streams = [
        s
        for s in info.get("streams", [])
        if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    if not streams:
        return None
    stream, fmt = streams[0], info.get("format", {})
    fps = _parse_rate(stream.get("avg_frame_rate")) or _parse_rate(stream.get("r_frame_rate"))

    num_frames: int | None = None
    exact = False
    try:
        num_frames = int(stream["nb_frames"])
        exact = num_frames > 0
    except (KeyError, ValueError, TypeError):
        pass
    if not exact:
        num_frames = None
        duration = _parse_rate(stream.get("duration")) or _parse_rate(fmt.get("duration"))
        if duration is not None and fps is not None:
            num_frames = round(duration * fps)
        else:  # raw elementary streams carry neither: count the packets (demux only, no decode)
            try:
                counted = ffmpeg.probe(path, v="error", select_streams="v:0", count_packets=None)
                num_frames = int(counted["streams"][0]["nb_read_packets"])
                exact = True
            except (ffmpeg.Error, OSError, ValueError, KeyError, IndexError, TypeError):
                num_frames = None

    rotation = 0
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            try:  # display-matrix rotation is counter-clockwise
                rotation = round(-float(side["rotation"])) % 360
            except (TypeError, ValueError):
                pass
            break
    else:
        try:  # the legacy tag is clockwise
            rotation = round(float(stream.get("tags", {}).get("rotate", 0))) % 360
        except (TypeError, ValueError):
            rotation = 0

    creation = _parse_creation_time(fmt.get("tags", {}).get("creation_time"))
    if creation is None:
        creation = _parse_creation_time(stream.get("tags", {}).get("creation_time"))
    return VideoProbe(
        fps=fps,
        num_frames=num_frames,
        num_frames_exact=exact,
        rotation=rotation,
        creation_time=creation,
        width=stream.get("width"),
        height=stream.get("height"),
    )
