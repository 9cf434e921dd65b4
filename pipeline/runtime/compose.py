"""Composition of a run: how the worker processes reach each other (:class:`Wiring`), the run key, and the
role functions every worker process runs.

``camera_process``, ``reid_process`` and ``matcher_process`` are what the full run starts as processes
(through :func:`pipeline.runtime.supervise.child_main`) and what the ``run_pipeline.py worker ROLE`` commands
run in the foreground, one per machine. They build their own components from the config and the wiring and
stop when ``stop`` (or, for the servers, ``drain`` once their input is empty) is set.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from common.redact import redact_url
from pipeline.config import PipelineConfig
from pipeline.matching.centering import PRIOR_WEIGHT
from pipeline.runtime.health import HealthReporter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wiring:
    """Everything a child process needs to reach the others (picklable; secrets only inside the URLs)."""

    db_url: str
    redis_url: str | None
    broker: Any  # BrokerEndpoint of the embedded broker, or None with Redis
    tracklet_stream: str
    embedding_stream: str
    session_key: str
    device: str | None = None

    def queue(self, cfg: PipelineConfig):
        from pipeline.transport.queues import open_queue

        q = cfg.queue
        return open_queue(
            self.redis_url, broker=self.broker, maxlen=q.maxlen, max_deliveries=q.max_deliveries
        )

    def __repr__(self) -> str:
        return f"Wiring(db={redact_url(self.db_url)!r}, redis={redact_url(self.redis_url or '') or None!r})"


def streams(cfg: PipelineConfig) -> tuple[str, str]:
    return f"{cfg.queue.stream_prefix}:tracklets", f"{cfg.queue.stream_prefix}:embeddings"


def model_name(checkpoint: Path) -> str:
    """Embeddings are compared only when they come from the same model (``models.checkpoint.model_name``)."""
    from models.checkpoint import model_name as name_of

    return name_of(checkpoint)


def make_session_key(cfg: PipelineConfig, *, only: str | None = None) -> str:
    """The run key stored with every tracklet (part of its natural key in SQL).

    Replaying recorded footage is idempotent: when every camera of the run is a file or image folder, the
    key is a digest of what determines the tracklets (camera ids, source files with size and modification
    time, start times, fps, ROI, crop, detector, tracker and tracklet settings, frame cap, looping), so running the
    same footage with the same settings again maps to the same rows and adds nothing. A run with a live camera
    gets a fresh key (start time + random suffix): track ids restart with every worker start.
    """
    import json

    cams = [c for c in cfg.enabled_cameras if only is None or c.id in only.split(",")]
    if cams and all(c.source_kind in ("file", "images") for c in cams):
        parts = []
        for c in cams:
            p = Path(c.source)
            st = p.stat() if p.exists() else None
            part = [c.id, str(p.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None,
                    c.start_time.isoformat() if c.start_time else None, c.fps, c.roi]  # fmt: skip
            if c.crop is not None:  # appended only when set, so the keys of runs without a crop stay the same
                part.append({"crop": list(c.crop)})
            parts.append(part)
        d, t, tl = cfg.detector, cfg.tracker, cfg.tracklets
        settings = [parts, [d.weights, d.imgsz, d.conf, d.iou, list(d.classes)], [t.name, t.params], vars(tl),
                    cfg.replay.max_frames]  # fmt: skip
        if cfg.replay.loop:  # appended only when on, so the keys of runs without a loop stay what they were
            settings.append({"loop": True})
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        return f"replay-{digest[:16]}"
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class MatchingThreshold:
    """The matcher's cosine threshold and where it came from (``source``: one line for the run summary), and
    its camera centering: ``prior`` None when off (docs/matcher.md, §3a)."""

    value: float
    source: str
    prior: np.ndarray | None = field(default=None, compare=False)  # == compares value, source, weight
    prior_weight: float = PRIOR_WEIGHT

    @property
    def centering(self) -> str:
        """One line for the run summary."""
        if self.prior is None:
            return "off"
        return f"on (camera means shrunk to the checkpoint's prior with weight {self.prior_weight:g})"


def matching_threshold(cfg: PipelineConfig) -> MatchingThreshold:
    """``matcher.threshold`` when it is a number; for ``auto`` (``None``) the threshold the re-ID checkpoint
    records with its operating point (``models.calibrate``), on the camera-centred scale when centering is on.
    ``matcher.camera_centering``: ``auto`` (``None``, the default) is on when the threshold is ``auto`` and the
    checkpoint records a camera prior; a threshold set as a number is a raw cosine unless centering is
    ``true``. Raises ``ValueError`` (one line, naming the key) when ``auto`` meets a checkpoint that records
    no threshold, or ``camera_centering: true`` one that records no prior. Imports torch (reads the
    checkpoint) unless the threshold is a number and centering is not ``true``."""
    mcfg = cfg.matcher
    if mcfg.threshold is not None and not mcfg.camera_centering:
        return MatchingThreshold(mcfg.threshold, "matcher.threshold (set in the config)")
    from models.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, read_checkpoint

    ckpt = Path(cfg.reid.checkpoint) if cfg.reid.checkpoint else DEFAULT_CHECKPOINT
    centering = None
    if mcfg.camera_centering is not False:
        from models.checkpoint import checkpoint_centering

        try:
            centering = checkpoint_centering(ckpt)
        except CheckpointError as exc:
            raise ValueError(f"matcher.camera_centering: {exc}") from None
    if centering is None and mcfg.camera_centering:
        raise ValueError(
            f"matcher.camera_centering: true, but the checkpoint {ckpt.name} records no camera prior; "
            "set matcher.camera_centering to auto or false"
        )
    prior = None if centering is None else centering.prior
    weight = PRIOR_WEIGHT if centering is None else centering.prior_weight
    if mcfg.threshold is not None:
        return MatchingThreshold(mcfg.threshold, "matcher.threshold (set in the config)", prior, weight)
    if centering is not None:
        value, op, scale = centering.threshold, centering.operating_point, " on camera-centred pairs"
    else:
        meta = read_checkpoint(ckpt).get("meta", {})
        if meta.get("threshold") is None:
            raise ValueError(
                f"matcher.threshold: auto, but the checkpoint {ckpt.name} records no calibrated threshold; "
                "set matcher.threshold to a number"
            )
        value, op, scale = float(meta["threshold"]), meta.get("operating_point") or {}, ""
    rates = ", ".join(f"{k} {v:.3g}" for k, v in op.items() if isinstance(v, int | float))
    return MatchingThreshold(
        float(value),
        f"auto: calibrated with {ckpt.name}{scale}" + (f" ({rates})" if rates else ""),
        prior,
        weight,
    )


def build_topology(cfg: PipelineConfig):
    from pipeline.matching.topology import Topology

    links = {tuple(link.cameras): (link.min_transit_s, link.max_transit_s) for link in cfg.topology.links}
    return Topology(links, [tuple(p) for p in cfg.topology.overlaps])


# ----------------------------------------------------------------------------------------------- roles


def camera_process(
    cfg: PipelineConfig,
    wiring: Wiring,
    *,
    stop: Any = None,
    only: list[str] | None = None,
    out_dir: str | None = None,
    save_video: bool = False,
    stats_out: Any = None,
    progress: bool | None = None,
) -> None:
    """Run the cameras, publish every closed tracklet, keep the cameras' health in SQL.

    ``stop``: an event (threading or multiprocessing) that stops the cameras when set. ``stats_out``: a queue
    that receives ``{camera_id: CameraReport}`` once, when the cameras have ended.
    """
    _role_setup("reid-cameras")
    from models.runtime import configure_torch
    from pipeline.camera.stage import build_detector, run_camera_stage
    from pipeline.transport.wire import encode_progress, encode_tracklet
    from storage import repository as repo
    from storage.db import open_store

    configure_torch()
    store = open_store(wiring.db_url)
    queue = wiring.queue(cfg)
    detector = build_detector(cfg, device=wiring.device)

    def publish(t):
        queue.publish(wiring.tracklet_stream, encode_tracklet(t, session=wiring.session_key))

    # markers go straight to the matcher: it applies one only once the tracklets numbered before it arrived
    def publish_progress(p):
        queue.publish(wiring.embedding_stream, encode_progress(p, session=wiring.session_key))

    def on_start(group):
        with store.session() as s:
            for c in group.cameras:
                conf = cfg.camera(c.camera_id)
                start = datetime.fromtimestamp(c.source.start_time, UTC) if c.source.start_time else None
                repo.upsert_camera(
                    s,
                    c.camera_id,
                    redact_url(str(conf.source)),
                    start,
                    crop=c.source.crop,
                    frame_size=c.source.frame_size,
                )
            s.commit()
        health = HealthReporter(store, group)
        health.start()
        if stop is None:
            return health.stop
        done = threading.Event()

        def watch():
            # Poll, never block in stop.wait(): a thread left inside a multiprocessing Event's wait (or holding
            # its lock) when this process exits makes the parent's stop.set() wait for it forever.
            while not done.wait(0.2):
                if stop.is_set():
                    group.stop()
                    return

        watcher = threading.Thread(target=watch, name="stop-watch", daemon=True)
        watcher.start()

        def on_end():
            done.set()
            watcher.join()
            health.stop()

        return on_end

    stats = run_camera_stage(
        cfg,
        detector=detector,
        out_dir=out_dir,
        save_video=save_video,
        only=only,
        on_tracklet=publish,
        on_progress=publish_progress,
        progress=progress,
        on_start=on_start,
    )
    if stats_out is not None:
        stats_out.put({cid: s.report() for cid, s in stats.items()})
    queue.close()
    store.dispose()


def reid_process(
    cfg: PipelineConfig,
    wiring: Wiring,
    *,
    consumer: str = "reid-1",
    stop: Any = None,
    drain: Any = None,
) -> None:
    """Serve the re-ID encoder: tracklets in, embeddings out, until ``stop`` (or ``drain`` and the tracklet
    stream is empty)."""
    _role_setup("reid-embedder")
    import torch

    from models.checkpoint import DEFAULT_CHECKPOINT, load_drsta, resolve_device
    from models.runtime import configure_torch
    from pipeline.reid.worker import TrackletEncoder, run_reid_worker

    configure_torch()
    device = resolve_device(wiring.device or cfg.reid.device)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # share the machine with the cameras
    ckpt = Path(cfg.reid.checkpoint) if cfg.reid.checkpoint else DEFAULT_CHECKPOINT
    model = load_drsta(ckpt, backbone_weights=cfg.reid.backbone_weights, device=device)
    encoder = TrackletEncoder(
        model,
        model_name=model_name(ckpt),
        device=device,
        num_frames=cfg.reid.num_frames,
        picture_crops=cfg.reid.picture_crops,
        picture_quality=cfg.reid.picture_quality,
        blur_heads=cfg.privacy.blur_heads,
    )
    queue = wiring.queue(cfg)
    run_reid_worker(
        queue,
        encoder,
        stream_in=wiring.tracklet_stream,
        stream_out=wiring.embedding_stream,
        group=cfg.reid.group,
        embedding_group=cfg.matcher.group,
        consumer=consumer,
        batch_size=cfg.reid.batch_size,
        max_wait_ms=cfg.reid.max_wait_ms,
        reclaim_idle_ms=cfg.reid.reclaim_idle_ms,
        stop=stop,
        drain=drain,
    )
    queue.close()


def matcher_process(
    cfg: PipelineConfig,
    wiring: Wiring,
    *,
    consumer: str = "matcher-1",
    stop: Any = None,
    drain: Any = None,
    expect: list[str] | None = None,
) -> None:
    """Serve the matcher; ``expect``: camera ids of this run (``wiring.session_key``) to wait for from the
    start, before they have said anything."""
    _role_setup("reid-matcher")
    from models.checkpoint import DEFAULT_CHECKPOINT
    from pipeline.matching.worker import restore_matcher, run_matcher_worker
    from storage.db import open_store

    store = open_store(wiring.db_url)
    queue = wiring.queue(cfg)
    ckpt = Path(cfg.reid.checkpoint) if cfg.reid.checkpoint else DEFAULT_CHECKPOINT
    name = model_name(ckpt)
    topology = build_topology(cfg)
    threshold = matching_threshold(cfg)
    log.info(
        "matcher threshold %.3f (%s); camera centering %s",
        threshold.value,
        threshold.source,
        threshold.centering,
    )

    def make():
        return restore_matcher(
            store,
            topology=topology,
            threshold=threshold.value,
            model=name,
            max_prototypes=cfg.matcher.max_prototypes,
            prior=threshold.prior,
            prior_weight=threshold.prior_weight,
        )

    run_matcher_worker(
        queue,
        store,
        make,
        stream=wiring.embedding_stream,
        group=cfg.matcher.group,
        retention_days=cfg.retention.days,
        prune_every_s=cfg.retention.prune_every_s,
        consumer=consumer,
        stop=stop,
        drain=drain,
        window_s=cfg.matcher.window_s,
        max_wait_s=cfg.matcher.max_wait_s,
        expect=(wiring.session_key, list(expect)) if expect else None,
    )
    queue.close()
    store.dispose()


def _role_setup(role: str) -> None:
    """What every role does first, in a child process or in the foreground: its name, offline models, logs."""
    _set_process_name(role)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(processName)s %(levelname)s %(message)s")


def _set_process_name(role: str) -> None:
    """Show the role in ``ps``/``top``/``psutil.Process.name()`` (Linux: prctl PR_SET_NAME); else nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, role.encode()[:15], 0, 0, 0)  # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass
