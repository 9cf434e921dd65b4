"""Building the stages from a validated config. ``run_pipeline.py`` (the composition root) calls these.

Every component takes required keyword arguments; this module hands them the config sections (through their
``from_config``), so the components never see the whole config and hold no defaults of their own.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from models.samples import resolve_sample
from pipeline.camera.detector import PersonDetector
from pipeline.camera.loop import Camera, CameraGroup, CameraStats, TrackletFileSink
from pipeline.camera.sources import open_source
from pipeline.camera.tracklets import TrackletBuilder
from pipeline.config import PipelineConfig
from pipeline.transport.messages import Progress, Tracklet
from trackers import build_tracker


def build_detector(cfg: PipelineConfig, *, device: str | None = None) -> PersonDetector:
    """The configured detector; its weights through :func:`resolve_sample` (``../shared``, else the cached
    public copy); ``device`` (the command line's) wins over ``detector.device`` when given."""
    return PersonDetector.from_config(
        cfg.detector, weights=resolve_sample(cfg.detector.weights), device=device
    )


def build_cameras(cfg: PipelineConfig, *, only: Sequence[str] | None = None) -> list[Camera]:
    """Open every enabled camera (or the ``only`` ones): source, its own tracker, its own tracklet builder.

    A camera that cannot be opened raises the source's one-line error naming it; cameras opened before it
    are closed again.
    """
    cams: list[Camera] = []
    opened = []
    selected = cfg.selected_cameras(only)
    try:
        for c in selected:
            source = open_source(
                c.id,
                resolve_sample(c.source) if c.source_kind in ("file", "images") else c.source,
                start_time=c.start_time,
                fps=c.fps,
                realtime=cfg.replay.realtime,
                max_frames=cfg.replay.max_frames,
                loop=cfg.replay.loop,
                live=cfg.live,
                crop=c.crop,
            )
            opened.append(source)
            try:
                tracker = build_tracker(
                    cfg.tracker.name, params=cfg.tracker.params, frame_rate=int(round(source.fps or 25))
                )
            except KeyError as exc:
                raise ValueError(f"tracker.name: {exc.args[0]}") from None
            except ValueError as exc:
                raise ValueError(f"tracker.params: {exc}") from None
            builder = TrackletBuilder.from_config(c.id, cfg.tracklets, roi=c.roi)
            cams.append(Camera(c.id, source, tracker, builder))
    except BaseException:
        for src in opened:
            src.close()
        raise
    return cams


class ProgressBars:
    """One tqdm bar per camera (on stderr), moved by ``CameraGroup``'s ``on_frame_done``."""

    def __init__(self, cameras: Sequence[Camera], *, disable: bool | None = None):
        self.bars = {
            c.camera_id: tqdm(
                total=c.source.num_frames,
                desc=c.camera_id,
                unit="fr",
                position=i,
                leave=True,
                dynamic_ncols=True,
                disable=disable,
                file=sys.stderr,
            )
            for i, c in enumerate(cameras)
        }

    def __call__(self, camera_id: str) -> None:
        self.bars[camera_id].update(1)

    def close(self) -> None:
        for b in self.bars.values():
            b.close()


def run_camera_stage(
    cfg: PipelineConfig,
    *,
    detector: PersonDetector,
    out_dir: str | Path | None = None,
    save_video: bool = False,
    only: Sequence[str] | None = None,
    on_tracklet: Callable[[Tracklet], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress: bool | None = None,
    on_start: Callable[[CameraGroup], Callable[[], None] | None] | None = None,
) -> dict[str, CameraStats]:
    """Replay or watch the cameras; every closed tracklet goes to ``on_tracklet``.

    With ``out_dir``: MOT files and tracklet JSONL per camera (renamed into place only when the run ends
    normally, Ctrl-C included), and annotated videos with ``save_video``. ``on_start(group)`` runs before the
    first frame (to register a stop handler, start health reporting...) and may return a callable that runs
    after the last one. ``on_progress`` receives the cameras' progress markers (see :class:`CameraGroup`).
    """
    cameras = build_cameras(cfg, only=only)
    sink = TrackletFileSink(out_dir, [c.camera_id for c in cameras]) if out_dir is not None else None
    video = None
    if save_video and out_dir is not None:
        from pipeline.camera.drawing import AnnotatedVideoWriter

        video = AnnotatedVideoWriter(out_dir, {c.camera_id: c.source.fps or 10.0 for c in cameras})

    def on_tracks(frame, dets, tracks):
        if sink is not None:
            sink.tracks(frame, dets, tracks)
        if video is not None:
            video.write(frame, tracks)

    def emit(t: Tracklet) -> None:
        if on_tracklet is not None:
            on_tracklet(t)  # published first: the file is a record of what was handed on
        if sink is not None:
            sink.tracklet(t)

    bars = ProgressBars(cameras, disable=None if progress is None else not progress)
    group = CameraGroup(
        cameras,
        detector.detect,
        batch=cfg.detector.batch,
        on_tracks=on_tracks if (sink or video) else None,
        on_tracklet=emit,
        on_frame_done=bars,
        on_progress=on_progress,
    )
    on_end = on_start(group) if on_start is not None else None
    complete = False
    try:
        stats = group.run()
        complete = True
    finally:
        bars.close()
        if on_end is not None:
            on_end()
        if sink is not None:
            sink.close(complete=complete)
        if video is not None:
            with contextlib.suppress(Exception):
                video.close()
    return stats
