"""Frame sources: video files, image folders, live streams and webcams, all yielding :class:`Frame`.

Replay is just another frame source: every source is an iterator of ``Frame(camera_id, frame_index,
timestamp, image)`` with ``image`` (H, W, 3) uint8 BGR and ``timestamp`` POSIX seconds (UTC), so the stage
code downstream never knows where its pixels came from. Build one with :func:`open_source`, which picks the
class from the source string.

Every source is a context manager; ``close()`` releases the decoder (and stops a live source's threads).
``source.health`` returns a frozen :class:`SourceHealth` snapshot and is safe to call from another thread
while frames flow.

Timestamps
    * Files: ``start_time + pts``. ``pts`` is OpenCV's ``CAP_PROP_POS_MSEC`` relative to the first frame,
      as long as it strictly increases; from the first frame where it does not (raw ``.264`` elementary
      streams report 0 for every frame), it is continued as ``previous pts + 1 / fps``. An ``fps``
      argument overrides the file's rate and makes ``pts = frame_index / fps`` for every frame.
    * Image folders: ``start_time + i / fps``.
    * Live streams and webcams: the wall clock when the frame was grabbed (``start_time`` is ignored).

    ``loop=True`` (files and image folders) re-opens the source at its end and goes on until ``close()`` or
    ``max_frames``. Frame indices keep counting and every pass is offset by the total duration of the passes
    before it (a pass of a file lasts its last frame's pts + 1 / fps, a pass of a folder ``len(images) /
    fps``), so timestamps strictly increase across the seam, one frame interval apart. A pass that yields no
    frame (the file was replaced by an empty one, the images deleted) ends iteration with a warning in
    ``health.last_error`` instead of looping forever.

    ``start_time`` is the argument if given (a naive ``datetime`` is taken as UTC), else the file's
    ``creation_time`` tag (ffprobe, format tags then stream tags; values before 1980 count as unset), else
    the file's modification time (for folders, the first image's).

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
    counter-clockwise, or the legacy ``rotate`` tag), else OpenCV's ``CAP_PROP_ORIENTATION_META``. OpenCV's
    FFmpeg backend already rotates frames when ``CAP_PROP_ORIENTATION_AUTO`` is on (the default); we apply
    only the difference between the wanted rotation and what OpenCV says it applied, so a frame is never
    rotated twice and a backend that does not rotate still gives upright frames.

Without the ffprobe binary (or when it fails on a file) every probed value falls back to OpenCV as above.

Live streams
    A reader thread owns the ``cv2.VideoCapture`` (FFmpeg backend, open and read timeouts set) and hands
    frames to the consumer through a small queue that drops the oldest frame when the consumer is slow, so
    lag stays bounded; drops are counted in ``health.dropped``. A watchdog thread marks the source
    disconnected when no frame arrived for ``read_timeout_s``; the reader then releases the capture and
    reopens it with exponential backoff (``reconnect_initial_s``, doubling, capped at ``reconnect_max_s``,
    +-10 % jitter). A reader stuck in a blocking call far beyond its timeouts is abandoned (it releases its
    own capture when the call returns) and a fresh one takes over. An unreachable URL at start is not an
    error: the source keeps retrying and says so in ``health``. Iteration ends only on ``close()`` or
    ``max_frames``; ``__next__`` waits in short slices, so ``close()`` from another thread ends it promptly,
    and :meth:`LiveStreamSource.read` offers a wait with a timeout for callers that poll. Credentials in a
    URL are masked in our messages and logs (FFmpeg's own log lines are outside our control).
"""

from __future__ import annotations

import configparser
import logging
import math
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import cv2
import ffmpeg
import numpy as np
from tqdm import tqdm

from pipeline.transport.messages import Frame

__all__ = [
    "SourceError",
    "SourceHealth",
    "VideoProbe",
    "FrameSource",
    "VideoFileSource",
    "ImageFolderSource",
    "LiveStreamSource",
    "WebcamSource",
    "LIVE_SCHEMES",
    "IMAGE_EXTENSIONS",
    "probe_video",
    "open_source",
    "iter_frames_with_progress",
]

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# Defaults, written once and shared by open_source and the classes.
DEFAULT_IMAGE_FOLDER_FPS = 25.0
FALLBACK_FPS = 25.0  # timestamps of a file whose rate neither ffprobe nor OpenCV knows
DEFAULT_READ_TIMEOUT_S = 5.0
DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_RECONNECT_INITIAL_S = 0.5
DEFAULT_RECONNECT_MAX_S = 30.0
DEFAULT_LIVE_QUEUE_SIZE = 2
_FPS_WINDOW_S = 5.0  # measured fps is over the frames of the last few seconds
_MIN_CREATION_TIME = 315532800.0  # 1980-01-01: earlier creation_time tags are zeroed/unset fields
_JITTER = 0.1

_T = TypeVar("_T")


class SourceError(ValueError):
    """A source that cannot deliver frames at open time; the one-line message names the camera and source."""


@dataclass(frozen=True)
class SourceHealth:
    """Snapshot of a source's state.

    ``connected``: open and delivering (files: open and not yet exhausted). ``reconnects``: reopen attempts
    after the first open attempt (successful or not). ``last_frame_time``: wall clock (POSIX s) when the
    latest frame was read. ``frames``: frames read from the source (for live sources this includes frames
    later dropped from the queue). ``fps``: measured over the last few seconds of wall time, 0.0 when
    stalled. ``last_error``: latest error or warning, kept after recovery. ``outages``: (start, end) wall
    clock of each disconnected period, ``end`` None while it lasts. ``dropped``: frames discarded because
    the consumer was slower than the live source.
    """

    camera_id: str
    connected: bool
    reconnects: int
    last_frame_time: float | None
    frames: int
    fps: float
    last_error: str | None
    outages: tuple[tuple[float, float | None], ...] = ()
    dropped: int = 0


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


class _HealthRecorder:
    """Mutable, lock-protected state behind :class:`SourceHealth` snapshots."""

    def __init__(self, camera_id: str) -> None:
        self._lock = threading.Lock()
        self._camera_id = camera_id
        self._connected = False
        self._reconnects = 0
        self._last_frame_time: float | None = None
        self._last_frame_mono: float | None = None
        self._frames = 0
        self._dropped = 0
        self._last_error: str | None = None
        self._outages: list[tuple[float, float | None]] = []
        self._recent: deque[float] = deque(maxlen=512)

    def frame(self, wall: float, mono: float) -> None:
        with self._lock:
            self._frames += 1
            self._last_frame_time = wall
            self._last_frame_mono = mono
            self._recent.append(mono)
            if not self._connected:
                self._set_connected_locked(wall)

    def connected(self, wall: float, mono: float) -> None:
        """The source opened; the stall watchdog counts from ``mono``."""
        with self._lock:
            self._last_frame_mono = mono
            if not self._connected:
                self._set_connected_locked(wall)

    def _set_connected_locked(self, wall: float) -> None:
        self._connected = True
        if self._outages and self._outages[-1][1] is None:
            self._outages[-1] = (self._outages[-1][0], wall)

    def disconnected(self, wall: float, error: str | None, *, outage: bool = True) -> None:
        """Mark disconnected; open an outage unless one is open or this is an intentional stop."""
        with self._lock:
            self._connected = False
            if error is not None:
                self._last_error = error
            if outage and not (self._outages and self._outages[-1][1] is None):
                self._outages.append((wall, None))

    def stale(self, mono: float, timeout_s: float) -> float | None:
        """Seconds since the last frame when connected and over ``timeout_s``, else None."""
        with self._lock:
            if not self._connected or self._last_frame_mono is None:
                return None
            age = mono - self._last_frame_mono
            return age if age > timeout_s else None

    def warn(self, message: str) -> None:
        with self._lock:
            self._last_error = message

    def reconnect_attempt(self) -> None:
        with self._lock:
            self._reconnects += 1

    def drop(self) -> None:
        with self._lock:
            self._dropped += 1

    def snapshot(self) -> SourceHealth:
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._recent if now - t <= _FPS_WINDOW_S]
            fps = 0.0
            if len(recent) >= 2 and recent[-1] > recent[0]:
                fps = (len(recent) - 1) / (recent[-1] - recent[0])
            return SourceHealth(
                camera_id=self._camera_id,
                connected=self._connected,
                reconnects=self._reconnects,
                last_frame_time=self._last_frame_time,
                frames=self._frames,
                fps=fps,
                last_error=self._last_error,
                outages=tuple(self._outages),
                dropped=self._dropped,
            )


class FrameSource(ABC):
    """An iterator of :class:`Frame` for one camera; a context manager whose exit calls :meth:`close`.

    ``fps`` is the nominal rate used for timestamps (None when unknown), ``num_frames`` the number of frames
    this source will yield when known (a file's frame count, capped by ``max_frames``), ``start_time`` the
    POSIX time of frame 0 for recorded sources (None for live ones). Iterate a source once. A looping source
    has ``num_frames`` ``max_frames`` (None without a cap: it does not end on its own).
    """

    def __init__(self, camera_id: str, *, max_frames: int | None) -> None:
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"camera {camera_id!r}: max_frames must be >= 0 or None, got {max_frames}")
        self._camera_id = camera_id
        self._max_frames = max_frames
        self._fps: float | None = None
        self._num_frames: int | None = None
        self._start_time: float | None = None
        self._health = _HealthRecorder(camera_id)
        self._yielded = 0
        self._closed = False

    @property
    def camera_id(self) -> str:
        return self._camera_id

    @property
    def fps(self) -> float | None:
        return self._fps

    @property
    def num_frames(self) -> int | None:
        return self._num_frames

    @property
    def start_time(self) -> float | None:
        return self._start_time

    @property
    def health(self) -> SourceHealth:
        return self._health.snapshot()

    @property
    def closed(self) -> bool:
        return self._closed

    def _cap_count(self, n: int | None) -> int | None:
        if self._max_frames is None:
            return n
        return self._max_frames if n is None else min(n, self._max_frames)

    def _limit_reached(self) -> bool:
        return self._max_frames is not None and self._yielded >= self._max_frames

    def __iter__(self) -> Iterator[Frame]:
        return self

    @abstractmethod
    def __next__(self) -> Frame: ...

    @abstractmethod
    def close(self) -> None:
        """Release the decoder; idempotent. Iteration stops afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------- helpers


def _to_posix(start_time: datetime) -> float:
    """POSIX seconds of ``start_time``; a naive datetime is taken as UTC."""
    if start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=UTC)
    return start_time.timestamp()


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
    if not isinstance(text, str):
        return None
    try:
        t = _to_posix(datetime.fromisoformat(text.strip()))
    except ValueError:
        return None
    return t if t >= _MIN_CREATION_TIME else None


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def probe_video(path: str | Path) -> VideoProbe | None:
    """Probe ``path`` with ffprobe (via ffmpeg-python); None when ffprobe is missing or fails on the file."""
    path = str(path)
    try:
        info = ffmpeg.probe(path, v="error")
    except ffmpeg.Error as e:
        log.debug("ffprobe failed on %s: %s", path, _one_line(e.stderr.decode(errors="replace")))
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


_ROTATE_CODES = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class _Pacer:
    """Sleeps so that a frame with presentation time ``pts`` leaves ``pts`` seconds after the first one."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._pts0 = 0.0

    def wait(self, pts: float) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._pts0 = now, pts
            return
        delay = self._t0 + (pts - self._pts0) - now
        if delay > 0:
            time.sleep(delay)


# ------------------------------------------------------------------------------------------ video files


class VideoFileSource(FrameSource):
    """Frames of a video file decoded with OpenCV, timestamped ``start_time + pts`` (see module docstring).

    Raises :class:`SourceError` at construction when the file is missing, cannot be opened, or yields no
    first frame. A file that stops decoding early (corrupt or truncated tail) ends iteration cleanly; when
    fewer frames came out than the file announced, ``health.last_error`` says so. ``realtime=True`` sleeps
    so frames leave at the pace of their timestamps; otherwise frames come as fast as they decode.
    ``loop=True`` re-opens the file at its end (or where it stops decoding) and goes on, frame indices and
    timestamps carried on (see the module docstring); a decoding error still ends iteration.
    """

    def __init__(
        self,
        camera_id: str,
        path: str | Path,
        *,
        start_time: datetime | None = None,
        fps: float | None = None,
        realtime: bool = False,
        max_frames: int | None = None,
        loop: bool = False,
    ) -> None:
        super().__init__(camera_id, max_frames=max_frames)
        if fps is not None and not fps > 0:
            raise ValueError(f"camera {camera_id!r}: fps must be > 0, got {fps}")
        self._path = Path(path)
        self._loop = loop
        if not self._path.is_file():
            raise SourceError(f"camera {camera_id!r}: video file {self._path} does not exist")
        probe = probe_video(self._path)
        cap = cv2.VideoCapture(str(self._path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera {camera_id!r}: cannot open video file {self._path} (not a video)")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"camera {camera_id!r}: video file {self._path} yields no frames")
        self._cap: cv2.VideoCapture | None = cap
        self._pending: tuple[np.ndarray, float] | None = (first, cap.get(cv2.CAP_PROP_POS_MSEC))

        cv_fps = cap.get(cv2.CAP_PROP_FPS)
        cv_fps = cv_fps if math.isfinite(cv_fps) and 0 < cv_fps < 1000 else None
        self._fps_override = fps is not None
        self._fps = fps or (probe.fps if probe is not None else None) or cv_fps
        self._ts_fps = self._fps or FALLBACK_FPS

        if probe is not None:
            count, self._count_exact = probe.num_frames, probe.num_frames_exact
        else:
            cv_count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            count = int(cv_count) if math.isfinite(cv_count) and cv_count > 0 else None
            self._count_exact = False
        self._file_frames = count
        self._num_frames = self._cap_count(None if loop else count)

        # OpenCV's own rotation (when auto-orientation is on) is subtracted from the wanted one.
        cv_meta = int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META))) % 360
        cv_applied = cv_meta if cap.get(cv2.CAP_PROP_ORIENTATION_AUTO) > 0 else 0
        wanted = probe.rotation if probe is not None else cv_meta
        self._rotate_code = _ROTATE_CODES.get((wanted - cv_applied) % 360)

        if start_time is not None:
            self._start_time = _to_posix(start_time)
        elif probe is not None and probe.creation_time is not None:
            self._start_time = probe.creation_time
        else:
            self._start_time = self._path.stat().st_mtime

        self._realtime = realtime
        self._pacer = _Pacer()
        self._decoded = 0  # frames decoded over all passes: the next frame's index
        self._pass = 0
        self._pass_offset = 0.0  # seconds: the total duration of the passes before this one
        self._start_pass()
        self._health.connected(time.time(), time.monotonic())

    def _start_pass(self) -> None:
        """Reset what timestamps a pass from its own frame 0: every pass is timed like the first."""
        self._pass_decoded = 0
        self._pts_reliable = not self._fps_override
        self._pts_base = 0.0
        self._last_pos = -math.inf
        self._last_rel = 0.0

    @property
    def path(self) -> Path:
        return self._path

    def _relative_pts(self, index: int, pos_ms: float) -> float:
        """Seconds since frame 0 of this pass (``index`` counts within the pass): POS_MSEC while it strictly
        increases, else continued at ``1 / fps``."""
        if self._fps_override:
            return index / self._ts_fps
        pos = pos_ms / 1000.0
        if self._pts_reliable and math.isfinite(pos) and pos > self._last_pos:
            if index == 0:
                self._pts_base = pos
            self._last_pos = pos
            rel = pos - self._pts_base
        else:
            if self._pts_reliable:
                self._pts_reliable = False
                if self._pass == 0:  # every pass behaves the same: say it once
                    log.debug(
                        "camera %r: %s: no usable pts from frame %d", self._camera_id, self._path, index
                    )
            rel = self._last_rel + 1.0 / self._ts_fps if index > 0 else 0.0
        self._last_rel = rel
        return rel

    def _truncation(self) -> str | None:
        """The warning for a pass that ended with fewer frames than the file announced, else None."""
        if self._file_frames is None or self._limit_reached():
            return None
        slack = 0 if self._count_exact else 2
        if self._pass_decoded >= self._file_frames - slack:
            return None
        return (
            f"camera {self._camera_id!r}: {self._path} ended after {self._pass_decoded} of "
            f"{self._file_frames} frames (truncated or corrupt file)"
        )

    def _finish(self, error: str | None = None) -> None:
        """End of decoding: warn if the file announced more frames than came out, then release."""
        if error is None and self._pass == 0:  # later passes of a loop were checked at the first seam
            error = self._truncation()
        if error is not None:
            log.warning("%s", error)
            self._health.warn(error)
        self.close()

    def _rewind(self) -> bool:
        """At the end of a pass: re-open the file for the next one. False (after :meth:`_finish`, with the
        reason) when the pass gave no frame or the file no longer opens, so a loop cannot spin forever."""
        if self._pass_decoded == 0:
            self._finish(
                f"camera {self._camera_id!r}: {self._path} yielded no frames on pass {self._pass + 1}; "
                "stopped looping"
            )
            return False
        if self._pass == 0 and (warning := self._truncation()) is not None:
            log.warning("%s (looping over the frames that decode)", warning)
            self._health.warn(warning)
        if self._cap is None or self._closed:  # closed from another thread meanwhile
            return False
        self._cap.release()
        cap = cv2.VideoCapture(str(self._path))
        if not cap.isOpened():
            cap.release()
            self._cap = None
            self._finish(f"camera {self._camera_id!r}: cannot re-open video file {self._path} to loop")
            return False
        self._cap = cap
        self._pass_offset += self._last_rel + 1.0 / self._ts_fps
        self._pass += 1
        self._start_pass()
        log.debug("camera %r: %s: pass %d starts", self._camera_id, self._path, self._pass + 1)
        return True

    def __next__(self) -> Frame:
        while True:
            if self._cap is None:
                raise StopIteration
            if self._limit_reached():
                self._finish()
                raise StopIteration
            if self._pending is not None:
                image, pos_ms = self._pending
                self._pending = None
                break
            try:
                ok, image = self._cap.read()
            except cv2.error as e:
                self._finish(f"camera {self._camera_id!r}: decoding {self._path} failed: {_one_line(str(e))}")
                raise StopIteration from None
            if ok and image is not None:
                pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                break
            if not (self._loop and self._rewind()):
                self._finish()
                raise StopIteration
        index = self._decoded
        self._decoded += 1
        rel = self._pass_offset + self._relative_pts(self._pass_decoded, pos_ms)
        self._pass_decoded += 1
        if self._rotate_code is not None:
            image = cv2.rotate(image, self._rotate_code)
        if self._realtime:
            self._pacer.wait(rel)
        self._health.frame(time.time(), time.monotonic())
        self._yielded += 1
        return Frame(self._camera_id, index, self._start_time + rel, image)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
            self._pending = None
            self._health.disconnected(time.time(), None, outage=False)
        self._closed = True


# ---------------------------------------------------------------------------------------- image folders


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _seqinfo_fps(folder: Path) -> float | None:
    """``frameRate`` of a MOTChallenge ``seqinfo.ini`` next to (or in) ``folder``, if present and valid."""
    for ini in (folder.parent / "seqinfo.ini", folder / "seqinfo.ini"):
        if not ini.is_file():
            continue
        parser = configparser.ConfigParser()
        try:
            parser.read(ini, encoding="utf-8")
            rate = parser.getfloat("Sequence", "frameRate", fallback=None)
        except (configparser.Error, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", ini, e)
            continue
        if rate is not None and math.isfinite(rate) and rate > 0:
            return rate
    return None


class ImageFolderSource(FrameSource):
    """Images of a folder (``.jpg/.jpeg/.png/.bmp``, natural name order: ``2.jpg`` before ``10.jpg``).

    ``fps``: the argument, else ``frameRate`` of a MOTChallenge ``seqinfo.ini`` in the parent folder, else 25.
    ``frame_index`` is the image's position in the folder; timestamps ``start_time + frame_index / fps``. An
    image that fails to decode after the first is skipped with a warning in ``health.last_error``.
    ``loop=True`` starts again at the first image after the last; pass ``k`` (from 0) counts the positions on
    from ``k * len(images)``, so indices and timestamps keep increasing. Images are read again each pass.
    Raises :class:`SourceError` when the folder holds no images or its first image does not decode.
    """

    def __init__(
        self,
        camera_id: str,
        path: str | Path,
        *,
        start_time: datetime | None = None,
        fps: float | None = None,
        realtime: bool = False,
        max_frames: int | None = None,
        loop: bool = False,
    ) -> None:
        super().__init__(camera_id, max_frames=max_frames)
        if fps is not None and not fps > 0:
            raise ValueError(f"camera {camera_id!r}: fps must be > 0, got {fps}")
        self._path = Path(path)
        self._loop = loop
        if not self._path.is_dir():
            raise SourceError(f"camera {camera_id!r}: image folder {self._path} does not exist")
        self._files = sorted(
            (p for p in self._path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: _natural_key(p.name),
        )
        if not self._files:
            raise SourceError(
                f"camera {camera_id!r}: image folder {self._path} has no {'/'.join(IMAGE_EXTENSIONS)} images"
            )
        first = cv2.imread(str(self._files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise SourceError(f"camera {camera_id!r}: first image {self._files[0]} does not decode")
        self._pending: np.ndarray | None = first
        self._fps = fps or _seqinfo_fps(self._path) or DEFAULT_IMAGE_FOLDER_FPS
        self._num_frames = self._cap_count(None if loop else len(self._files))
        self._start_time = _to_posix(start_time) if start_time is not None else self._files[0].stat().st_mtime
        self._realtime = realtime
        self._pacer = _Pacer()
        self._next_index = 0  # position in the folder of the next image
        self._pass = 0
        self._pass_yielded = 0
        self._health.connected(time.time(), time.monotonic())

    @property
    def path(self) -> Path:
        return self._path

    def __next__(self) -> Frame:
        while not self._closed and not self._limit_reached():
            if self._next_index == len(self._files):
                if not self._loop:
                    break
                if self._pass_yielded == 0:  # every image failed this pass: the next would fail too
                    msg = (
                        f"camera {self._camera_id!r}: no image of {self._path} decoded on pass "
                        f"{self._pass + 1}"
                    )
                    log.warning("%s; stopped looping", msg)
                    self._health.warn(msg)
                    break
                self._next_index, self._pass, self._pass_yielded = 0, self._pass + 1, 0
            position = self._next_index
            self._next_index += 1
            if self._pending is not None:
                image, self._pending = self._pending, None
            else:
                image = cv2.imread(str(self._files[position]), cv2.IMREAD_COLOR)
            if image is None:
                msg = f"camera {self._camera_id!r}: skipped image {self._files[position]} (does not decode)"
                log.warning("%s", msg)
                self._health.warn(msg)
                continue
            index = self._pass * len(self._files) + position
            rel = index / self._fps
            if self._realtime:
                self._pacer.wait(rel)
            self._health.frame(time.time(), time.monotonic())
            self._yielded += 1
            self._pass_yielded += 1
            return Frame(self._camera_id, index, self._start_time + rel, image)
        self.close()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._pending = None
            self._health.disconnected(time.time(), None, outage=False)
        self._closed = True


# ----------------------------------------------------------------------------------------- live sources


def _redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class LiveStreamSource(FrameSource):
    """Frames of a network stream (RTSP, HTTP, UDP, TCP...) read by a background thread; see module docstring.

    ``timestamp`` is the wall clock at grab; ``frame_index`` counts every grabbed frame across reconnects,
    so frames dropped from the full queue leave gaps. ``fps`` is the argument, else what the stream
    announces once connected (None before). Never raises for an unreachable stream: watch ``health``.
    Call :meth:`close` (or use ``with``) to stop the threads.
    """

    def __init__(
        self,
        camera_id: str,
        url: str,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        reconnect_initial_s: float = DEFAULT_RECONNECT_INITIAL_S,
        reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
        queue_size: int = DEFAULT_LIVE_QUEUE_SIZE,
    ) -> None:
        super().__init__(camera_id, max_frames=max_frames)
        for name, value in (
            ("read_timeout_s", read_timeout_s),
            ("open_timeout_s", open_timeout_s),
            ("reconnect_initial_s", reconnect_initial_s),
            ("reconnect_max_s", reconnect_max_s),
        ):
            if not value > 0:
                raise ValueError(f"camera {camera_id!r}: {name} must be > 0, got {value}")
        if queue_size < 1:
            raise ValueError(f"camera {camera_id!r}: queue_size must be >= 1, got {queue_size}")
        self._url = url
        self._display = self._describe()
        self._fps = fps
        self._num_frames = max_frames
        self._read_timeout_s = read_timeout_s
        self._open_timeout_s = open_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = max(reconnect_max_s, reconnect_initial_s)
        self._stuck_after_s = open_timeout_s + read_timeout_s + 5.0
        self._rng = random.Random()
        self._queue: deque[Frame] = deque(maxlen=queue_size)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._generation = 0
        self._blocked_since: float | None = None
        self._attempts = 0
        self._next_index = 0
        initial = self._initial_capture()
        self._threads: list[threading.Thread] = []
        self._spawn_reader(0, initial)
        watchdog = threading.Thread(target=self._watch, name=f"watchdog-{camera_id}", daemon=True)
        self._threads.append(watchdog)
        watchdog.start()

    # -- hooks for subclasses

    def _describe(self) -> str:
        return f"stream {_redact_url(self._url)}"

    def _initial_capture(self) -> cv2.VideoCapture | None:
        """A capture opened before the threads start, or None to open in the reader thread."""
        return None

    def _open_capture(self) -> cv2.VideoCapture | None:
        """Open the stream; None when it cannot be opened now. Runs in the reader thread."""
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self._open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self._read_timeout_s * 1000),
        ]
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    # -- reader and watchdog threads

    def _spawn_reader(self, generation: int, cap: cv2.VideoCapture | None) -> None:
        t = threading.Thread(
            target=self._read_loop, args=(generation, cap), name=f"reader-{self._camera_id}", daemon=True
        )
        self._threads.append(t)
        t.start()

    def _current(self, generation: int) -> bool:
        with self._state_lock:
            return not self._stop.is_set() and self._generation == generation

    def _blocking(self, generation: int, call: Callable[[], _T]) -> _T:
        """Run a blocking capture call, visible to the watchdog while it lasts."""
        with self._state_lock:
            if self._generation == generation:
                self._blocked_since = time.monotonic()
        try:
            return call()
        finally:
            with self._state_lock:
                if self._generation == generation:
                    self._blocked_since = None

    def _backoff(self, delay: float) -> float:
        """Sleep ``delay`` with jitter (interrupted by close); return the next delay."""
        self._stop.wait(delay * self._rng.uniform(1.0 - _JITTER, 1.0 + _JITTER))
        return min(delay * 2.0, self._reconnect_max_s)

    def _read_loop(self, generation: int, cap: cv2.VideoCapture | None) -> None:
        delay = self._reconnect_initial_s
        delivered = False
        if cap is not None:
            self._on_open(cap)
        try:
            while self._current(generation):
                if cap is None:
                    with self._state_lock:
                        self._attempts += 1
                        retry = self._attempts > 1
                    if retry:
                        self._health.reconnect_attempt()
                    error = ""
                    try:
                        cap = self._blocking(generation, self._open_capture)
                    except cv2.error as e:
                        cap, error = None, f": {_one_line(str(e))}"
                    if not self._current(generation):
                        break
                    if cap is None:
                        self._fail(f"cannot open {self._display}{error}")
                        delay = self._backoff(delay)
                        continue
                    self._on_open(cap)
                    delivered = False
                try:
                    ok, image = self._blocking(generation, cap.read)
                except cv2.error as e:
                    ok, image = False, None
                    self._health.warn(f"camera {self._camera_id!r}: read error: {_one_line(str(e))}")
                if not self._current(generation):
                    break
                if not ok or image is None:
                    cap.release()
                    cap = None
                    self._fail(f"{self._display} stopped delivering frames (ended or read timed out)")
                    if delivered:
                        delay = self._reconnect_initial_s
                    delay = self._backoff(delay)
                    continue
                delivered = True
                self._push(generation, image)
        except Exception as e:  # a dead reader would silently freeze this camera: record it instead
            log.exception("camera %r: reader thread failed", self._camera_id)
            self._fail(f"reader thread failed: {_one_line(repr(e))}")
        finally:
            if cap is not None:
                cap.release()

    def _on_open(self, cap: cv2.VideoCapture) -> None:
        if self._fps is None:
            announced = cap.get(cv2.CAP_PROP_FPS)
            if math.isfinite(announced) and 0 < announced < 1000:
                self._fps = announced
        self._health.connected(time.time(), time.monotonic())
        log.info("camera %r: connected to %s", self._camera_id, self._display)

    def _fail(self, reason: str) -> None:
        message = f"camera {self._camera_id!r}: {reason}"
        was_connected = self._health.snapshot().connected
        self._health.disconnected(time.time(), message)
        if was_connected:
            log.warning("%s", message)
        else:
            log.debug("%s", message)

    def _push(self, generation: int, image: np.ndarray) -> None:
        wall, mono = time.time(), time.monotonic()
        with self._cond:
            with self._state_lock:
                if self._generation != generation or self._stop.is_set():
                    return
            frame = Frame(self._camera_id, self._next_index, wall, image)
            self._next_index += 1
            if len(self._queue) == self._queue.maxlen:
                self._health.drop()
            self._queue.append(frame)
            self._cond.notify()
        self._health.frame(wall, mono)

    def _watch(self) -> None:
        tick = min(0.25, self._read_timeout_s / 4)
        while not self._stop.wait(tick):
            age = self._health.stale(time.monotonic(), self._read_timeout_s)
            if age is not None:
                self._fail(f"no frame from {self._display} for {age:.1f} s")
            with self._state_lock:
                since = self._blocked_since
                stuck = since is not None and time.monotonic() - since > self._stuck_after_s
                if stuck:
                    self._generation += 1
                    self._blocked_since = None
                    generation = self._generation
            if stuck:
                self._fail(f"reader blocked on {self._display} beyond its timeouts; starting a new one")
                self._spawn_reader(generation, None)

    # -- consumer side

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame, waiting at most ``timeout`` seconds (None: until one comes or the source closes).

        Returns None on timeout, after :meth:`close`, or once ``max_frames`` frames were returned.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                if self._stop.is_set() or self._limit_reached():
                    return None
                remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._stop.is_set() or self._limit_reached():
                return None
            frame = self._queue.popleft()
            self._yielded += 1
        if self._limit_reached():
            self.close()
        return frame

    def __next__(self) -> Frame:
        # Short waits rather than one long one: close() from another thread ends iteration promptly.
        while True:
            frame = self.read(timeout=0.5)
            if frame is not None:
                return frame
            if self._stop.is_set() or self._limit_reached():
                self.close()
                raise StopIteration

    def close(self) -> None:
        """Stop the threads (without waiting for a blocked open or read: the reader releases on return)."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._stop.set()
            self._queue.clear()
            self._cond.notify_all()
        self._health.disconnected(time.time(), None, outage=False)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=0.2)


class WebcamSource(LiveStreamSource):
    """A local camera by OpenCV index; like :class:`LiveStreamSource` (reconnects on unplug) but the first
    open happens at construction and raises :class:`SourceError` naming the camera and the index.
    """

    def __init__(self, camera_id: str, index: int, **kwargs: Any) -> None:
        self._index = int(index)
        super().__init__(camera_id, str(self._index), **kwargs)

    def _describe(self) -> str:
        return f"webcam index {self._index}"

    def _open_capture(self) -> cv2.VideoCapture | None:
        # Local backends (V4L2, MSMF...) reject the FFmpeg timeout parameters; the watchdog covers stalls.
        cap = cv2.VideoCapture(self._index)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _initial_capture(self) -> cv2.VideoCapture | None:
        cap = self._open_capture()
        if cap is None:
            raise SourceError(f"camera {self._camera_id!r}: webcam index {self._index} cannot be opened")
        self._attempts = 1
        return cap


# ------------------------------------------------------------------------------------------------- entry


def open_source(
    camera_id: str,
    source: str,
    *,
    start_time: datetime | None = None,
    fps: float | None = None,
    realtime: bool = False,
    max_frames: int | None = None,
    loop: bool = False,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
    reconnect_initial_s: float = DEFAULT_RECONNECT_INITIAL_S,
    reconnect_max_s: float = DEFAULT_RECONNECT_MAX_S,
) -> FrameSource:
    """Open the source named by ``source`` for camera ``camera_id``.

    ``rtsp:// rtsps:// rtmp:// http:// https:// udp:// tcp://`` -> :class:`LiveStreamSource`; a digit string
    -> :class:`WebcamSource`; an existing directory -> :class:`ImageFolderSource`; an existing file ->
    :class:`VideoFileSource`. ``start_time``, ``realtime`` and ``loop`` apply to recorded sources only (a live
    source ignores ``loop``: it never ends); the timeout and reconnect settings to live ones. Raises
    :class:`SourceError` (a ``ValueError``) naming the camera and the source when a path does not exist or a
    recorded source or webcam cannot deliver frames.
    """
    scheme, sep, _ = source.partition("://")
    if sep and scheme.lower() in LIVE_SCHEMES:
        return LiveStreamSource(
            camera_id,
            source,
            fps=fps,
            max_frames=max_frames,
            read_timeout_s=read_timeout_s,
            open_timeout_s=open_timeout_s,
            reconnect_initial_s=reconnect_initial_s,
            reconnect_max_s=reconnect_max_s,
        )
    if source.isdigit():
        return WebcamSource(
            camera_id,
            int(source),
            fps=fps,
            max_frames=max_frames,
            read_timeout_s=read_timeout_s,
            open_timeout_s=open_timeout_s,
            reconnect_initial_s=reconnect_initial_s,
            reconnect_max_s=reconnect_max_s,
        )
    path = Path(source).expanduser()
    recorded = {
        "start_time": start_time,
        "fps": fps,
        "realtime": realtime,
        "max_frames": max_frames,
        "loop": loop,
    }
    if path.is_dir():
        return ImageFolderSource(camera_id, path, **recorded)
    if path.is_file():
        return VideoFileSource(camera_id, path, **recorded)
    if path.exists():
        raise SourceError(f"camera {camera_id!r}: source {path} is neither a regular file nor a directory")
    raise SourceError(
        f"camera {camera_id!r}: source {_redact_url(source)!r} does not exist (expected a video file, "
        f"an image folder, a {'/'.join(s + '://' for s in LIVE_SCHEMES)} URL or a webcam index)"
    )


def iter_frames_with_progress(source: FrameSource, *, position: int = 0) -> Iterator[Frame]:
    """Yield ``source``'s frames while a tqdm bar advances (``desc`` = camera id, ``total`` =
    ``num_frames`` when known); ``position`` stacks one bar per camera. The caller still owns and
    closes ``source``.
    """
    with tqdm(total=source.num_frames, desc=source.camera_id, position=position, unit="frame") as bar:
        for frame in source:
            bar.update(1)
            yield frame
