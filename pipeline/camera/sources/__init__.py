"""Frame sources: video files, image folders, live streams and webcams, all yielding :class:`Frame`.

Replay is just another frame source: every source is an iterator of ``Frame(camera_id, frame_index,
timestamp, image)`` with ``image`` (H, W, 3) uint8 BGR and ``timestamp`` POSIX seconds (UTC), so the stage
code downstream never knows where its pixels came from. Build one with :func:`open_source`, which picks the
class with the one source-kind rule, :func:`pipeline.camera.source_kind.source_kind`.

Modules, by job:

- :mod:`~pipeline.camera.sources.base`: the :class:`FrameSource` contract, :class:`SourceHealth`,
  :class:`SourceError`, the shared defaults and the ``crop`` every kind of source applies (the rule itself is
  :mod:`pipeline.camera.crop`);
- :mod:`~pipeline.camera.sources.probe`: :func:`probe_video` (ffprobe: rate, frame count, rotation, creation
  time);
- :mod:`~pipeline.camera.sources.recorded`: :class:`VideoFileSource` and :class:`ImageFolderSource` (timestamps
  from the footage, ``loop``, ``realtime``);
- :mod:`~pipeline.camera.sources.live`: :class:`LiveStreamSource` and :class:`WebcamSource` (reader thread,
  watchdog, reconnects with backoff, credentials redacted).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from common.redact import redact_url
from pipeline.camera.crop import Crop
from pipeline.camera.source_kind import LIVE_SCHEMES, source_kind
from pipeline.camera.sources.base import (
    FrameSource,
    LiveSettings,
    SourceError,
    SourceHealth,
)
from pipeline.camera.sources.live import LiveStreamSource, WebcamSource
from pipeline.camera.sources.probe import VideoProbe, probe_video
from pipeline.camera.sources.recorded import ImageFolderSource, VideoFileSource
from pipeline.transport.messages import Frame

__all__ = [
    "FrameSource",
    "ImageFolderSource",
    "LiveSettings",
    "LiveStreamSource",
    "SourceError",
    "SourceHealth",
    "VideoFileSource",
    "VideoProbe",
    "WebcamSource",
    "iter_frames_with_progress",
    "open_source",
    "probe_video",
]


def open_source(
    camera_id: str,
    source: str,
    *,
    start_time: datetime | None = None,
    fps: float | None = None,
    realtime: bool = False,
    max_frames: int | None = None,
    loop: bool = False,
    live: LiveSettings | None = None,
    crop: Crop | None = None,
) -> FrameSource:
    """Open the source named by ``source`` for camera ``camera_id``, of the kind :func:`source_kind` says.

    ``rtsp:// rtsps:// rtmp:// http:// https:// udp:// tcp://`` -> :class:`LiveStreamSource`; a digit string
    -> :class:`WebcamSource`; a path ending in a separator or without a suffix -> :class:`ImageFolderSource`;
    any other path -> :class:`VideoFileSource`. ``start_time``, ``realtime`` and ``loop`` apply to recorded
    sources only (a live source ignores ``loop``: it never ends). ``live`` (the config's ``live:`` section)
    holds the timeout and reconnect settings a live source or webcam needs; opening one without it raises
    ``ValueError``. ``crop`` ``(x1, y1, x2, y2)`` (pixels of the source's upright frame, x2 and y2 exclusive) applies to
    every kind: the source yields that rectangle of each frame and reports its size as ``frame_size``; a crop
    that is not four integers with ``0 <= x1 < x2``, ``0 <= y1 < y2`` raises ``ValueError``. Raises
    :class:`SourceError` (a ``ValueError``) naming the camera and the source (credentials redacted) for an
    unsupported URL scheme, a path that does not exist or is not of its kind (a folder with a suffix, a file
    without one), a recorded source or webcam that cannot deliver frames, or a recorded source whose frames
    the crop does not fit (a live source finds out at its first frame: see
    :class:`~pipeline.camera.sources.live.LiveStreamSource`).
    """
    try:
        kind = source_kind(source)
    except ValueError as e:
        raise SourceError(f"camera {camera_id!r}: source {redact_url(source)!r}: {e}") from None
    if kind in ("live", "webcam"):
        if live is None:
            raise ValueError(
                f"camera {camera_id!r}: a live source needs the live: settings (open_source(live=...))"
            )
        settings = {
            "fps": fps,
            "max_frames": max_frames,
            "read_timeout_s": live.read_timeout_s,
            "open_timeout_s": live.open_timeout_s,
            "reconnect_initial_s": live.reconnect_initial_s,
            "reconnect_max_s": live.reconnect_max_s,
            "crop": crop,
        }
        if kind == "live":
            return LiveStreamSource(camera_id, source, **settings)
        return WebcamSource(camera_id, int(source), **settings)
    path = Path(source).expanduser()
    if not path.exists():
        raise SourceError(
            f"camera {camera_id!r}: source {redact_url(source)!r} does not exist (expected a video file, "
            f"an image folder, a {'/'.join(s + '://' for s in LIVE_SCHEMES)} URL or a webcam index)"
        )
    recorded = {
        "start_time": start_time,
        "fps": fps,
        "realtime": realtime,
        "max_frames": max_frames,
        "loop": loop,
        "crop": crop,
    }
    if kind == "images":
        if not path.is_dir():
            raise SourceError(
                f"camera {camera_id!r}: source {path} names an image folder (no suffix) but is not a directory"
            )
        return ImageFolderSource(camera_id, path, **recorded)
    if path.is_dir():
        raise SourceError(
            f"camera {camera_id!r}: source {path} is a directory but its suffix names a video file; "
            f"end it with '/' to read it as an image folder"
        )
    if not path.is_file():
        raise SourceError(f"camera {camera_id!r}: source {path} is neither a regular file nor a directory")
    return VideoFileSource(camera_id, path, **recorded)


def iter_frames_with_progress(source: FrameSource, *, position: int = 0) -> Iterator[Frame]:
    """Yield ``source``'s frames while a tqdm bar advances (``desc`` = camera id, ``total`` =
    ``num_frames`` when known); ``position`` stacks one bar per camera. The caller still owns and
    closes ``source``.
    """
    with tqdm(total=source.num_frames, desc=source.camera_id, position=position, unit="frame") as bar:
        for frame in source:
            bar.update(1)
            yield frame
