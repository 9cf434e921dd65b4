"""Camera workers: frames -> detections -> tracks -> closed tracklets, for one or several cameras.

Each camera's source is read in its own thread, so a stalled live stream never stalls the others; the
detector (one model for all cameras) takes the frames that are ready, batched across cameras; each camera
then runs its own tracker and tracklet builder. Per camera, frames are processed strictly in order, so a
replay gives the same tracks every time.

Outputs go to ``sinks`` (callables): the MOT writer and the tracklet JSONL writer here, the queue publisher
in the full pipeline. Every emitted tracklet carries its :class:`pipeline.messages.Order` (per-camera number
and watermark), and ``on_progress`` receives each camera's :class:`pipeline.messages.Progress` marker about
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

import numpy as np

from pipeline.messages import Detections, Frame, Order, Progress, Tracklet, Tracks
from pipeline.mot_io import append_mot_rows, tracklet_to_json
from pipeline.sources import FrameSource, LiveStreamSource, SourceHealth
from pipeline.tracklets import TrackletBuilder
from trackers import Tracker

_END = object()  # end-of-stream marker in a camera's frame queue


@dataclass
class CameraStats:
    """Counts for the final summary, one per camera."""

    frames: int = 0
    detections: int = 0
    tracklets: int = 0
    wall_s: float = 0.0
    first_error: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


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
    dropped in replay); live sources drop frames inside the source itself."""

    def __init__(self, cam: Camera, maxsize: int, stop: threading.Event):
        super().__init__(name=f"reader-{cam.camera_id}", daemon=True)
        self.cam = cam
        self.frames: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stop_event = stop

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
        except Exception as exc:  # a source failing mid-run ends that camera only; recorded in its stats
            self.cam.stats.first_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.frames.put(_END)


class CameraGroup:
    """Runs several cameras with one shared detector.

    ``detect(images) -> list[Detections]`` is the detector (batched across cameras, at most ``batch`` frames
    per call). ``on_tracks(frame, detections, tracks)`` and ``on_tracklet(tracklet)`` receive every result;
    ``on_frame_done(camera_id)`` lets a caller move progress bars. ``run`` returns when every source has ended
    (replay) or ``stop()`` was called (live / Ctrl-C); open tracklets are flushed to ``on_tracklet`` then.
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
        self._stop = threading.Event()
        self._readers = [_Reader(c, queue_size, self._stop) for c in self.cameras]

    def stop(self) -> None:
        self._stop.set()

    def health(self) -> dict[str, SourceHealth]:
        return {c.camera_id: c.source.health for c in self.cameras}

    def run(self) -> dict[str, CameraStats]:
        t0 = time.perf_counter()
        for r in self._readers:
            r.start()
        active = list(self._readers)
        next_cam = 0
        try:
            while active and not self._stop.is_set():
                picked: list[tuple[_Reader, Frame]] = []
                ended: list[_Reader] = []
                # round-robin over cameras, at most one frame per camera per batch (keeps per-camera order)
                for i in range(len(active)):
                    r = active[(next_cam + i) % len(active)]
                    try:
                        item = r.frames.get_nowait()
                    except queue.Empty:
                        continue
                    if item is _END:
                        ended.append(r)
                    else:
                        picked.append((r, item))
                    if len(picked) >= self.batch:
                        break
                next_cam += 1
                for r in ended:
                    active.remove(r)
                    self._finish(r.cam, t0)
                self._progress(active)
                if not picked:
                    if active:
                        self._wait_any(active)
                    continue
                dets = self.detect([f.image for _, f in picked])
                for (r, frame), d in zip(picked, dets, strict=True):
                    self._process(r.cam, frame, d)
        finally:
            self._stop.set()
            for r in active:  # stopped early: flush what is open so nothing seen is lost
                self._finish(r.cam, t0)
            for c in self.cameras:
                c.source.close()
        return {c.camera_id: c.stats for c in self.cameras}

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
        # a live source that is down delivers nothing: the matcher should not wait for it meanwhile
        idle = isinstance(cam.source, LiveStreamSource) and not cam.source.health.connected
        marker = Progress(
            cam.camera_id,
            cam.published - 1,
            cam.builder.watermark,
            cam.markers,
            idle=idle and not final,
            final=final,
            published_at=time.time(),
        )
        cam.markers += 1
        cam.last_marker = time.monotonic()
        self.on_progress(marker)

    def _finish(self, cam: Camera, t0: float) -> None:
        if cam.stats.wall_s:
            return
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
