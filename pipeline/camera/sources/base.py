"""What every frame source shares: the :class:`FrameSource` contract, :class:`SourceHealth` snapshots and the
recorder behind them, :class:`SourceError`, and the defaults the sources and :func:`open_source` share.

Every source is an iterator of ``Frame(camera_id, frame_index, timestamp, image)`` with ``image`` (H, W, 3)
uint8 BGR and ``timestamp`` POSIX seconds (UTC), and a context manager; ``close()`` releases the decoder (and
stops a live source's threads). ``source.health`` returns a frozen :class:`SourceHealth` snapshot and is safe
to call from another thread while frames flow.

A source opened with a ``crop`` (see :mod:`pipeline.camera.crop`) yields the cropped view: every frame's
``image`` is ``original[y1:y2, x1:x2]`` as its own contiguous array, and ``frame_size`` is the crop's size.
The crop is applied here, once for every kind of source (:meth:`FrameSource._cropped`).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from pipeline.camera.crop import Crop, check_crop, check_crop_fits, crop_size
from pipeline.transport.messages import Frame

__all__ = [
    "DEFAULT_IMAGE_FOLDER_FPS",
    "DEFAULT_LIVE_QUEUE_SIZE",
    "FALLBACK_FPS",
    "FrameSource",
    "HealthRecorder",
    "SourceError",
    "LiveSettings",
    "SourceHealth",
    "one_line",
    "to_posix",
]

# Fixed settings of the sources (the configurable ones, live timeouts included, are the config schema's).
DEFAULT_IMAGE_FOLDER_FPS = 25.0
FALLBACK_FPS = 25.0  # timestamps of a file whose rate neither ffprobe nor OpenCV knows
DEFAULT_LIVE_QUEUE_SIZE = 2
_FPS_WINDOW_S = 5.0  # measured fps is over the frames of the last few seconds


class LiveSettings(Protocol):
    """How a live source waits, in seconds (the config's ``live:`` section, ``LiveConfig``, is one)."""

    read_timeout_s: float
    open_timeout_s: float
    reconnect_initial_s: float
    reconnect_max_s: float


class SourceError(ValueError):
    """A source that cannot deliver frames: at open time, or a live source whose frames its ``crop`` does not
    fit (raised by iteration). The one-line message names the camera and the source."""


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


class HealthRecorder:
    """Mutable, lock-protected state behind :class:`SourceHealth` snapshots; every method is thread-safe."""

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

    ``crop`` (``(x1, y1, x2, y2)`` pixels of the source's upright frame, x2 and y2 exclusive, or None) makes
    the source yield that rectangle of every frame; ``frame_size`` is ``(width, height)`` of the frames
    yielded (the crop's size when cropping; None before a live source's first frame without a crop). A crop
    that is not four integers with ``0 <= x1 < x2`` and ``0 <= y1 < y2`` raises ``ValueError`` naming the
    camera; one that does not fit the frames raises :class:`SourceError` at open for recorded sources (see
    each class for frames that stop fitting later, and for live sources).
    """

    def __init__(self, camera_id: str, *, max_frames: int | None, crop: Crop | None = None) -> None:
        if max_frames is not None and max_frames < 0:
            raise ValueError(f"camera {camera_id!r}: max_frames must be >= 0 or None, got {max_frames}")
        self._crop: Crop | None = None
        self._frame_size: tuple[int, int] | None = None
        if crop is not None:
            try:
                self._crop = check_crop(crop)
            except ValueError as e:
                raise ValueError(f"camera {camera_id!r}: crop: {e}") from None
            self._frame_size = crop_size(self._crop)
        self._camera_id = camera_id
        self._max_frames = max_frames
        self._fps: float | None = None
        self._num_frames: int | None = None
        self._start_time: float | None = None
        self._health = HealthRecorder(camera_id)
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
    def crop(self) -> Crop | None:
        return self._crop

    @property
    def frame_size(self) -> tuple[int, int] | None:
        return self._frame_size

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

    def _describe(self) -> str:
        """What this source reads, for messages (credentials redacted)."""
        return "source"

    def _check_fits(self, width: int, height: int) -> None:
        """Raise :class:`SourceError` naming the camera, the crop, the frame size and the source when the crop
        does not fit a ``width`` x ``height`` frame; without a crop, remember that size as ``frame_size``."""
        if self._crop is None:
            self._frame_size = (width, height)
            return
        try:
            check_crop_fits(self._crop, width, height)
        except ValueError as e:
            raise SourceError(f"camera {self._camera_id!r}: {self._describe()}: {e}") from None

    def _cropped(self, image: np.ndarray) -> np.ndarray:
        """``image`` (H, W, 3) as the camera sees it: unchanged without a crop, else the crop's rectangle as
        a C-contiguous copy, so it neither aliases a buffer the decoder may reuse nor keeps the whole frame
        alive for as long as a tracklet holds the view. Raises :class:`SourceError` when it does not fit."""
        self._check_fits(int(image.shape[1]), int(image.shape[0]))
        if self._crop is None:
            return image
        x1, y1, x2, y2 = self._crop
        return image[y1:y2, x1:x2].copy()

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


def to_posix(start_time: datetime) -> float:
    """POSIX seconds of ``start_time``; a naive datetime is taken as UTC."""
    if start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=UTC)
    return start_time.timestamp()


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with ``...``."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
