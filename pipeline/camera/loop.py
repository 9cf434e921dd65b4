"""Camera workers: frames -> detections -> tracks -> closed tracklets, for one or several cameras.

Each camera's source is read in its own thread, so a stalled live stream never stalls the others; the
detector (one model for all cameras) takes the frames that are ready, batched across cameras; each camera
then runs its own tracker and tracklet builder. Per camera, frames are processed strictly in order, so a
replay gives the same tracks every time.

Outputs go to ``sinks`` (callables): the MOT writer and the tracklet JSONL writer here, the queue publisher
in the full pipeline. Every emitted tracklet carries its :class:`pipeline.transport.messages.Order` (per-camera number
and watermark), and ``on_progress`` receives each camera's :class:`pipeline.transport.messages.Progress` marker about
once a second and once more, final, when the camera ends: together they let the matcher decide in an order
that does not depend on timing (docs/matcher.md, "Order").
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from pipeline.camera.mot_io import append_mot_rows, tracklet_to_json
from pipeline.camera.sources import FrameSource, LiveStreamSource, SourceError, SourceHealth
from pipeline.camera.tracklets import TrackletBuilder
from pipeline.transport.messages import Detections, Frame, Order, Progress, Tracklet, Tracks
from trackers import Tracker

_END = object()  # end-of-stream marker in a camera's frame queue
# recorded cameras replay together, none more than this ahead of the others (recorded time, seconds)
SYNC_SLACK_S = 1.0
# What a source may raise mid-run when its footage or device fails (a file removed or unreadable, a decoder
# error): that camera ends, the reason in its stats. Anything else is a bug and fails the run loudly.
SOURCE_FAILURES = (SourceError, OSError, cv2.error)


@dataclass(frozen=True)
class CameraReport:
    """One camera's final figures, as the camera stage reports them (frozen, picklable: the camera process
    sends ``{camera_id: CameraReport}`` to the parent). ``fps``: frames per wall-clock second of the run;
    ``error``: why the source ended early (``"Type: message"``), else None."""

    frames: int
    detections: int
    tracklets: int
    fps: float
    error: str | None


@dataclass
class CameraStats:
    """Counts kept while a camera runs (mutated by :class:`CameraGroup`); :meth:`report` freezes them."""

    frames: int = 0
    detections: int = 0
    tracklets: int = 0
    wall_s: float = 0.0
    first_error: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def report(self) -> CameraReport:
        return CameraReport(self.frames, self.detections, self.tracklets, self.fps, self.first_error)


@dataclass
class Camera:
    """Everything one camera needs; the composition root builds it (one tracker instance per camera)."""

    camera_id: str
    source: FrameSource
    tracker: Tracker
    builder: TrackletBuilder
    stats: CameraStats = field(default_factory=CameraStats)
    published: int = 0  # tracklets numbered so far (the next Order.seq)
    markers: int = 0  # progress markers sent so far (the next Progress.n)
    last_marker: float = -math.inf  # monotonic time of the last progress marker


class _Reader(threading.Thread):
    """Reads one source into a small bounded queue. Recorded sources block when the queue is full (nothing is
    dropped in replay); live sources drop frames inside the source itself.

    A source failure (:data:`SOURCE_FAILURES`) ends this camera only, recorded in its stats: the other
    cameras' footage is still good. Any other exception is kept in ``crash`` for the group to re-raise.
    """

    def __init__(self, cam: Camera, maxsize: int, stop: threading.Event):
        super().__init__(name=f"reader-{cam.camera_id}", daemon=True)
        self.cam = cam
        self.frames: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stop_event = stop
        self.live = isinstance(cam.source, LiveStreamSource)
        self.head: Frame | object | None = None  # the next item, taken out of ``frames`` but not yet used
        self.crash: BaseException | None = None

    def peek(self) -> None:
        if self.head is None:
            try:
                self.head = self.frames.get_nowait()
            except queue.Empty:
                pass

    def run(self) -> None:
        try:
            for frame in self.cam.source:
                while not self.stop_event.is_set():
                    try:
                        self.frames.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self.stop_event.is_set():
                    break
        except SOURCE_FAILURES as exc:
            self.cam.stats.first_error = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # a bug: the group's thread re-raises it, so the run fails loudly
            self.crash = exc
        finally:
            self.frames.put(_END)


class CameraGroup:
    """Runs several cameras with one shared detector.

    ``detect(images) -> list[Detections]`` is the detector (batched across cameras, at most ``batch`` frames
    per call). ``on_tracks(frame, detections, tracks)`` and ``on_tracklet(tracklet)`` receive every result;
    ``on_frame_done(camera_id)`` lets a caller move progress bars. ``run`` returns when every source has ended
    (replay) or ``stop()`` was called (live / Ctrl-C); it re-raises an unexpected exception of a source
    (see :class:`_Reader`) after stopping the others. Open tracks are closed and handed on at the end of a
    source and for live cameras on ``stop()``; a recorded camera stopped early keeps its open tracks back, so
    that re-running the same footage stores them whole (see :meth:`_finish`).
    """

    def __init__(
        self,
        cameras: Sequence[Camera],
        detect: Callable[[list[np.ndarray]], list[Detections]],
        *,
        batch: int = 4,
        on_tracks: Callable[[Frame, Detections, Tracks], None] | None = None,
        on_tracklet: Callable[[Tracklet], None] | None = None,
        on_frame_done: Callable[[str], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 1.0,
        queue_size: int = 4,
    ):
        if not cameras:
            raise ValueError("CameraGroup: no cameras")
        self.cameras = list(cameras)
        self.detect = detect
        self.batch = max(1, batch)
        self.on_tracks = on_tracks
        self.on_tracklet = on_tracklet
        self.on_frame_done = on_frame_done
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        self._started_at = 0.0  # wall clock of run(), sent in every progress marker
        self._stop = threading.Event()
        self._readers = [_Reader(c, queue_size, self._stop) for c in self.cameras]
        self._reader_of = {r.cam.camera_id: r for r in self._readers}

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> dict[str, SourceHealth]:
        return {c.camera_id: c.source.health for c in self.cameras}

    def run(self) -> dict[str, CameraStats]:
        t0 = time.perf_counter()
        self._started_at = time.time()
        for r in self._readers:
            r.start()
        active = list(self._readers)
        try:
            while active and not self._stop.is_set():
                for r in active:
                    r.peek()
                ended = [r for r in active if r.head is _END]
                for r in ended:
                    active.remove(r)
                    r.head = None
                    if r.crash is not None:
                        raise r.crash
                    self._finish(r.cam, t0)
                picked = self._pick(active)
                self._progress(active)
                if not picked:
                    if active:
                        self._wait_any(active)
                    continue
                for r, _ in picked:
                    r.head = None
                dets = self.detect([f.image for _, f in picked])
                for (r, frame), d in zip(picked, dets, strict=True):
                    self._process(r.cam, frame, d)
        finally:
            self._stop.set()
            for r in active:  # stopped early (Ctrl-C)
                self._finish(r.cam, t0, interrupted=True)
            for c in self.cameras:
                c.source.close()
        return {c.camera_id: c.stats for c in self.cameras}

    def _pick(self, active: list[_Reader]) -> list[tuple[_Reader, Frame]]:
        """The frames to detect next, at most one per camera (per-camera order) and ``batch`` in all.

        Live cameras first, whenever they have a frame. Recorded cameras play on one clock: only when every
        one of them has its next frame ready, and only those within ``SYNC_SLACK_S`` of the earliest, in
        timestamp order. So a multi-camera replay shows the cameras together as they were recorded (a camera
        whose footage starts later waits for the clock to get there), and no camera runs ahead of the others
        in recorded time, which the matcher would otherwise have to wait out (docs/matcher.md, "Order").
        """
        live = [r for r in active if r.live and isinstance(r.head, Frame)]
        recorded = [r for r in active if not r.live]
        ready: list[_Reader] = []
        if recorded and all(isinstance(r.head, Frame) for r in recorded):
            t_min = min(r.head.timestamp for r in recorded)  # type: ignore[union-attr]
            ready = sorted(
                (r for r in recorded if r.head.timestamp <= t_min + SYNC_SLACK_S),  # type: ignore[union-attr]
                key=lambda r: (r.head.timestamp, r.cam.camera_id),  # type: ignore[union-attr]
            )
        return [(r, r.head) for r in [*live, *ready][: self.batch]]  # type: ignore[misc]

    def _wait_any(self, active: list[_Reader]) -> None:
        # cheap wait until some reader has something; the queues are small, so poll at a short interval
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            if any(not r.frames.empty() for r in active):
                return
            time.sleep(0.002)

    def _process(self, cam: Camera, frame: Frame, dets: Detections) -> None:
        tracks = cam.tracker.update(dets, frame.image)
        cam.stats.frames += 1
        cam.stats.detections += len(dets)
        if self.on_tracks is not None:
            self.on_tracks(frame, dets, tracks)
        self._emit_all(cam, cam.builder.update(frame, dets, tracks))
        if self.on_frame_done is not None:
            self.on_frame_done(cam.camera_id)

    def _emit_all(self, cam: Camera, closed: list[Tracklet]) -> None:
        """Number and hand on the tracklets closed at one frame. Each one's watermark bounds what comes after
        it: the builder's (for what is still open) and the end times of its siblings behind it."""
        wm = cam.builder.watermark
        bounds = []
        for t in reversed(closed):
            bounds.append(wm)
            wm = min(wm, t.end_time)
        for t, bound in zip(closed, reversed(bounds), strict=True):
            cam.stats.tracklets += 1
            t = dataclasses.replace(t, order=Order(cam.published, bound, time.time()))
            cam.published += 1
            if self.on_tracklet is not None:
                self.on_tracklet(t)

    def _progress(self, active: list[_Reader]) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        for r in active:
            if now - r.cam.last_marker >= self.progress_every_s:
                self._marker(r.cam)

    def _marker(self, cam: Camera, *, final: bool = False) -> None:
        if self.on_progress is None:
            return
        reader = self._reader_of[cam.camera_id]
        # a live source that is down delivers nothing: the matcher should not wait for it meanwhile
        idle = reader.live and not cam.source.health.connected
        head = reader.head
        wm = (
            cam.builder.watermark_before(head.timestamp) if isinstance(head, Frame) else cam.builder.watermark
        )
        marker = Progress(
            cam.camera_id,
            cam.published - 1,
            wm,
            cam.markers,
            idle=idle and not final,
            final=final,
            published_at=time.time(),
            started_at=self._started_at,
        )
        cam.markers += 1
        cam.last_marker = time.monotonic()
        self.on_progress(marker)

    def _finish(self, cam: Camera, t0: float, *, interrupted: bool = False) -> None:
        """End one camera. A live camera's open tracks are closed and handed on (that video is gone). A
        recorded one stopped early keeps them back: they were cut by the interruption, not closed by what the
        camera saw, and a re-run of the same footage (same replay key) produces them whole; handed on now,
        their cut versions would take the whole ones' keys in SQL."""
        if cam.stats.wall_s:
            return
        if not interrupted or self._reader_of[cam.camera_id].live:
            self._emit_all(cam, cam.builder.flush())
        cam.stats.wall_s = time.perf_counter() - t0
        self._marker(cam, final=True)


class TrackletFileSink:
    """Writes ``DIR/<camera_id>.txt`` (MOT rows) and ``DIR/<camera_id>_tracklets.jsonl`` (closed tracklets).

    Files are written under a temporary name and renamed on ``close()``, so an interrupted run never leaves
    a half-written file that looks complete.
    """

    def __init__(self, out_dir: str | Path, camera_ids: Sequence[str]):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self._mot: dict[str, TextIO] = {}
        self._jsonl: dict[str, TextIO] = {}
        for cid in camera_ids:
            self._mot[cid] = open(self.out / f"{cid}.txt.part", "w")
            self._jsonl[cid] = open(self.out / f"{cid}_tracklets.jsonl.part", "w")

    def tracks(self, frame: Frame, dets: Detections, tracks: Tracks) -> None:
        append_mot_rows(self._mot[frame.camera_id], frame.frame_index, tracks)

    def tracklet(self, t: Tracklet) -> None:
        fh = self._jsonl[t.camera_id]
        fh.write(json.dumps(tracklet_to_json(t)) + "\n")
        fh.flush()

    def close(self, *, complete: bool = True) -> None:
        for fh in [*self._mot.values(), *self._jsonl.values()]:
            fh.close()
        if complete:
            for cid in self._mot:
                (self.out / f"{cid}.txt.part").replace(self.out / f"{cid}.txt")
                (self.out / f"{cid}_tracklets.jsonl.part").replace(self.out / f"{cid}_tracklets.jsonl")
