"""Live sources: network streams (:class:`LiveStreamSource`) and local cameras (:class:`WebcamSource`).

``timestamp`` is the wall clock when the frame was grabbed. A reader thread owns the ``cv2.VideoCapture``
(FFmpeg backend, open and read timeouts set) and hands frames to the consumer through a small queue that drops
the oldest frame when the consumer is slow, so lag stays bounded; drops are counted in ``health.dropped``. A
watchdog thread marks the source disconnected when no frame arrived for ``read_timeout_s``; the reader then
releases the capture and reopens it with exponential backoff (``reconnect_initial_s``, doubling, capped at
``reconnect_max_s``, +-10 % jitter). A reader stuck in a blocking call far beyond its timeouts is abandoned (it
releases its own capture when the call returns) and a fresh one takes over. An unreachable URL at start is not
an error: the source keeps retrying and says so in ``health``. Iteration ends only on ``close()`` or
``max_frames``; ``__next__`` waits in short slices, so ``close()`` from another thread ends it promptly, and
:meth:`LiveStreamSource.read` offers a wait with a timeout for callers that poll.

A ``crop`` is checked against every frame grabbed (the stream's size is known only then). A frame it does not
fit (x2 > width or y2 > height) stops the source instead of killing the reader thread: the reason, naming the
camera, the crop and the frame size, goes to ``health.last_error`` and the log, the threads end, and iteration
raises :class:`SourceError` with it (reconnecting would not change a misconfigured crop).

Every message and log line of ours goes through :mod:`common.redact` with the URL's secrets (password,
``?token=``...), so they never reach ``health``, logs or tracebacks (FFmpeg's own log lines, written by the
library to stderr, are outside our control).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import cv2
import numpy as np

from common.redact import redact_text, redact_url, url_secrets
from pipeline.camera.crop import Crop
from pipeline.camera.sources.base import (
    DEFAULT_LIVE_QUEUE_SIZE,
    FrameSource,
    SourceError,
    one_line,
)
from pipeline.transport.messages import Frame

__all__ = ["LiveStreamSource", "WebcamSource"]

log = logging.getLogger(__name__)

_JITTER = 0.1

_T = TypeVar("_T")


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
        read_timeout_s: float,
        open_timeout_s: float,
        reconnect_initial_s: float,
        reconnect_max_s: float,
        queue_size: int = DEFAULT_LIVE_QUEUE_SIZE,
        crop: Crop | None = None,
    ) -> None:
        super().__init__(camera_id, max_frames=max_frames, crop=crop)
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
        self._secrets = url_secrets(url)
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
        self._error: str | None = None  # why the source gave up (a crop that does not fit), for __next__
        initial = self._initial_capture()
        self._threads: list[threading.Thread] = []
        self._spawn_reader(0, initial)
        watchdog = threading.Thread(target=self._watch, name=f"watchdog-{camera_id}", daemon=True)
        self._threads.append(watchdog)
        watchdog.start()

    # -- hooks for subclasses

    def _describe(self) -> str:
        return f"stream {redact_url(self._url)}"

    def _redact(self, text: str) -> str:
        """``text`` with every URL in it redacted and this source's URL secrets masked, for messages and logs."""
        return redact_text(text, self._secrets)

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
                        cap, error = None, f": {one_line(str(e))}"
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
                    self._health.warn(
                        self._redact(f"camera {self._camera_id!r}: read error: {one_line(str(e))}")
                    )
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
                try:
                    image = self._cropped(image)
                except SourceError as e:
                    self._give_up(str(e))
                    break
                delivered = True
                self._push(generation, image)
        except Exception as e:  # a dead reader would silently freeze this camera: record it instead
            # The traceback is redacted too: an exception text may quote the URL.
            log.error(
                "camera %r: reader thread failed\n%s", self._camera_id, self._redact(traceback.format_exc())
            )
            self._fail(f"reader thread failed: {one_line(repr(e))}")
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
        message = self._redact(f"camera {self._camera_id!r}: {reason}")
        was_connected = self._health.snapshot().connected
        self._health.disconnected(time.time(), message)
        if was_connected:
            log.warning("%s", message)
        else:
            log.debug("%s", message)

    def _give_up(self, reason: str) -> None:
        """Stop for good (the threads end, iteration raises :class:`SourceError` with ``reason``)."""
        message = self._redact(reason)
        log.error("%s", message)
        self._health.disconnected(time.time(), message, outage=False)
        with self._cond:
            self._error = message
            self._stop.set()
            self._cond.notify_all()

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

        Returns None on timeout, after :meth:`close`, once ``max_frames`` frames were returned, or once the
        source gave up (``health.last_error`` says why).
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
        """The next frame; raises :class:`SourceError` when the source gave up (a crop that does not fit)."""
        # Short waits rather than one long one: close() from another thread ends iteration promptly.
        while True:
            frame = self.read(timeout=0.5)
            if frame is not None:
                return frame
            if self._stop.is_set() or self._limit_reached():
                self.close()
                if self._error is not None:
                    raise SourceError(self._error)
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
