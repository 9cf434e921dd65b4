"""The whole pipeline as processes: camera worker(s), re-ID worker(s) and the matcher, joined by queues.

``run_full`` is what ``python run_pipeline.py --cameras cams.yaml`` runs: it opens (and migrates) the store,
starts the embedded broker unless a Redis URL is given, starts every role as a separate process (``spawn``),
waits for the cameras to finish (replay) or for Ctrl-C, then drains: re-ID workers stop once the tracklet
stream is empty, the matcher once the embedding stream is empty, so every closed tracklet ends in SQL.
The ``*_process`` functions are also what the ``run_pipeline.py worker ROLE`` commands run, one per machine.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, redact_url

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 2.0
MAX_RESTARTS = 5  # per worker role and run: a worker that keeps dying is a bug to see, not to hide


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
    """Embeddings are compared only when they come from the same model: name + content hash."""
    from models.weights import sha256_file

    return f"{checkpoint.stem}@{sha256_file(checkpoint)[:12]}"


def make_session_key(cfg: PipelineConfig, *, only: str | None = None) -> str:
    """The run key stored with every tracklet (part of its natural key in SQL).

    Replaying recorded footage is idempotent: when every camera of the run is a file or image folder, the
    key is a digest of what determines the tracklets (camera ids, source files with size and modification
    time, start times, fps, ROI, detector, tracker and tracklet settings, frame cap, looping), so running the
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
            parts.append(
                [c.id, str(p.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None,
                 c.start_time.isoformat() if c.start_time else None, c.fps, c.roi]
            )  # fmt: skip
        d, t, tl = cfg.detector, cfg.tracker, cfg.tracklets
        settings = [parts, [d.weights, d.imgsz, d.conf, d.iou, list(d.classes)], [t.name, t.params], vars(tl),
                    cfg.replay.max_frames]  # fmt: skip
        if cfg.replay.loop:  # appended only when on, so the keys of runs without a loop stay what they were
            settings.append({"loop": True})
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        return f"replay-{digest[:16]}"
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


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
    _in_child: bool = True,
) -> None:
    """Run the cameras, publish every closed tracklet, keep the cameras' health in SQL."""
    _child_setup(_in_child, "reid-cameras")
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
                repo.upsert_camera(s, c.camera_id, redact_url(str(conf.source)), start)
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
        stats_out.put({cid: (s.frames, s.tracklets, s.fps, s.first_error) for cid, s in stats.items()})
    queue.close()
    store.dispose()


class HealthReporter(threading.Thread):
    """Every few seconds, copy each source's health into ``cameras``; log connects/disconnects as events."""

    def __init__(self, store, group, every_s: float = HEALTH_EVERY_S):
        super().__init__(name="health", daemon=True)
        self.store, self.group, self.every_s = store, group, every_s
        self._halt = threading.Event()
        self._connected: dict[str, bool] = {}

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        try:
            self.report()  # final state
        except Exception as exc:  # the store being down must not fail the cameras' run
            log.warning("final camera health not stored: %s", exc)

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            try:
                self.report()
            except Exception as exc:  # the store being down must not stop the cameras
                log.warning("camera health not stored: %s", exc)

    def report(self) -> None:
        from storage import repository as repo

        now = datetime.now(UTC)
        with self.store.session() as s:
            for cid, h in self.group.health().items():
                last = datetime.fromtimestamp(h.last_frame_time, UTC) if h.last_frame_time else None
                repo.update_camera_health(
                    s,
                    cid,
                    connected=h.connected,
                    reconnects=h.reconnects,
                    last_frame_time=last,
                    frames=h.frames,
                    fps=h.fps,
                    last_error=h.last_error,
                    now=now,
                )
                before = self._connected.get(cid)
                if before is not None and before != h.connected:
                    event = "reconnected" if h.connected else "disconnected"
                    repo.add_health_event(s, cid, event=event, time=now, detail=h.last_error)
                if h.connected or before is not None:  # still connecting at start is no outage yet
                    self._connected[cid] = h.connected
            s.commit()


def reid_process(
    cfg: PipelineConfig,
    wiring: Wiring,
    *,
    consumer: str = "reid-1",
    stop: Any = None,
    drain: Any = None,
    _in_child: bool = True,
) -> None:
    _child_setup(_in_child, "reid-embedder")
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
        model, model_name=model_name(ckpt), device=device, num_frames=cfg.reid.num_frames
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
    _in_child: bool = True,
) -> None:
    """Serve the matcher; ``expect``: camera ids of this run (``wiring.session_key``) to wait for from the
    start, before they have said anything."""
    _child_setup(_in_child, "reid-matcher")
    from models.checkpoint import DEFAULT_CHECKPOINT
    from pipeline.matching.worker import restore_matcher, run_matcher_worker
    from storage.db import open_store

    store = open_store(wiring.db_url)
    queue = wiring.queue(cfg)
    ckpt = Path(cfg.reid.checkpoint) if cfg.reid.checkpoint else DEFAULT_CHECKPOINT
    name = model_name(ckpt)
    topology = build_topology(cfg)

    def make():
        return restore_matcher(
            store,
            topology=topology,
            threshold=cfg.matcher.threshold,
            model=name,
            max_prototypes=cfg.matcher.max_prototypes,
        )

    run_matcher_worker(
        queue,
        store,
        make,
        stream=wiring.embedding_stream,
        group=cfg.matcher.group,
        consumer=consumer,
        stop=stop,
        drain=drain,
        window_s=cfg.matcher.window_s,
        max_wait_s=cfg.matcher.max_wait_s,
        expect=(wiring.session_key, list(expect)) if expect else None,
    )
    queue.close()
    store.dispose()


def _child_setup(in_child: bool, role: str) -> None:
    if in_child:  # Ctrl-C goes to the whole process group; children stop when the parent tells them, in order
        signal.signal(signal.SIGINT, signal.SIG_IGN)
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


# ----------------------------------------------------------------------------------------------- parent


def run_full(args, cfg: PipelineConfig) -> int:
    """Run every role as a process on this machine; print the summary. Returns the exit code."""
    from pipeline.transport.queues import start_local_broker
    from storage.db import open_store

    db_url = args.db or cfg.db.url
    redis_url = args.redis or cfg.queue.redis_url
    store = open_store(db_url)  # migrates once here, and fails fast on a bad URL
    broker = None if redis_url else start_local_broker()
    tracklets, embeddings = streams(cfg)
    session_key = make_session_key(cfg, only=getattr(args, "only", None))
    wiring = Wiring(
        db_url,
        redis_url,
        broker.endpoint if broker else None,
        tracklets,
        embeddings,
        session_key,
        args.device,
    )
    queue = wiring.queue(cfg)
    queue.ensure_group(tracklets, cfg.reid.group)
    queue.ensure_group(embeddings, cfg.matcher.group)

    # children inherit this before they import numpy: the matcher's matrix products are small, and on a
    # small shared machine extra BLAS threads mostly wait for each other (bench/matcher_scale.py)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    stop_cameras, reid_drain, matcher_drain, stop_all = (ctx.Event() for _ in range(4))
    stats_q = ctx.Queue()
    out = getattr(args, "out", None)
    only = args.only.split(",") if getattr(args, "only", None) else None
    progress = False if getattr(args, "quiet", False) else None
    cameras_run = [c.id for c in cfg.enabled_cameras if only is None or c.id in only]
    factories = {
        "matcher": lambda: ctx.Process(
            target=matcher_process,
            args=(cfg, wiring),
            kwargs={"stop": stop_all, "drain": matcher_drain, "expect": cameras_run},
            name="matcher",
        ),
        "reid": lambda: ctx.Process(
            target=reid_process,
            args=(cfg, wiring),
            kwargs={"stop": stop_all, "drain": reid_drain},
            name="reid",
        ),
        "cameras": lambda: ctx.Process(
            target=camera_process,
            args=(cfg, wiring),
            kwargs={
                "stop": stop_cameras,
                "only": only,
                "out_dir": out,
                "save_video": getattr(args, "save_video", False),
                "stats_out": stats_q,
                "progress": progress,
            },
            name="cameras",
        ),
    }
    procs = {name: make() for name, make in factories.items()}
    restarts = dict.fromkeys(procs, 0)
    interrupted = {"n": 0}

    def on_signal(signum, _frame):
        interrupted["n"] += 1
        if interrupted["n"] == 1:
            print("\nstopping: the cameras stop, then the queues drain into SQL (Ctrl-C again to abort)")
            stop_cameras.set()
        else:
            stop_all.set()

    def restartable(name: str) -> bool:
        return name != "cameras" and restarts[name] < MAX_RESTARTS and not stop_all.is_set()

    def supervise() -> None:
        """Restart a re-ID worker or matcher that died (killed, out of memory...): the queues kept what it
        had not acknowledged, and the new one finishes it. The cameras are not restarted (a replay would
        start over; a live camera's tracks would be cut); their failure ends the run."""
        for name in ("reid", "matcher"):
            p = procs[name]
            if p.is_alive() or p.exitcode == 0 or not restartable(name):
                continue
            restarts[name] += 1
            log.warning(
                "the %s worker died (exit code %s); restarting it (%d/%d)",
                name,
                p.exitcode,
                restarts[name],
                MAX_RESTARTS,
            )
            procs[name] = factories[name]()
            procs[name].start()

    def wait(name: str) -> None:
        while procs[name].is_alive() or (procs[name].exitcode not in (0, None) and restartable(name)):
            supervise()
            procs[name].join(timeout=0.5)
            if name == "cameras":
                camera_stats.update(_drain_stats(stats_q))

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    t0 = time.perf_counter()
    camera_stats: dict = {}
    try:
        for p in procs.values():
            p.start()
        wait("cameras")
        camera_stats.update(_drain_stats(stats_q))
        reid_drain.set()
        wait("reid")
        matcher_drain.set()
        wait("matcher")
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        for p in procs.values():
            if p.is_alive():
                stop_all.set()
                p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        queue.close()
        if broker is not None:
            broker.shutdown()
    for name, n in restarts.items():
        if n:
            print(f"note: the {name} worker was restarted {n} time(s) during the run (see the log above)")
    failed = [n for n, p in procs.items() if p.exitcode not in (0, None)]
    summary = pipeline_summary(store, camera_stats, wall_s=time.perf_counter() - t0)
    store.dispose()
    print_summary(summary)
    if out:
        import json

        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if failed:
        print(f"error: worker process(es) failed: {', '.join(failed)} (see the log above)")
        return 1
    return 0


def _drain_stats(stats_q) -> dict:
    """The camera process's final statistics, when it has sent them."""
    stats: dict = {}
    while True:
        try:
            stats = stats_q.get_nowait()
        except Exception:
            return stats


def pipeline_summary(store, camera_stats: dict, *, wall_s: float) -> dict:
    from storage import repository as repo

    with store.session(readonly=True) as s:
        identities = repo.list_identities(s)
        multi = [i for i in identities if len(i.cameras) >= 2]
        counts = repo.counts(s)
    return {
        "cameras": {
            cid: {"frames": f, "tracklets": n, "fps": round(fps, 2), "error": err}
            for cid, (f, n, fps, err) in camera_stats.items()
        },
        "tracklets_in_sql": counts["tracklets"],
        "identities": len(identities),
        "identities_in_2plus_cameras": len(multi),
        "multi_camera_identities": [
            {"identity": i.identity_id, "cameras": list(i.cameras), "tracklets": i.num_tracklets}
            for i in multi[:20]
        ],
        "wall_s": round(wall_s, 1),
    }


def print_summary(summary: dict) -> None:
    print()
    print(f"{'camera':<16}{'frames':>8}{'tracklets':>11}{'fps':>8}")
    for cid, c in summary["cameras"].items():
        print(
            f"{cid:<16}{c['frames']:>8}{c['tracklets']:>11}{c['fps']:>8.1f}"
            + (f"  ! {c['error']}" if c["error"] else "")
        )
    print(
        f"tracklets in SQL: {summary['tracklets_in_sql']}   identities: {summary['identities']}   "
        f"seen in 2+ cameras: {summary['identities_in_2plus_cameras']}   wall time: {summary['wall_s']} s"
    )
    for i in summary["multi_camera_identities"]:
        print(f"  identity {i['identity']}: {', '.join(i['cameras'])} ({i['tracklets']} tracklets)")


def run_role(args, cfg: PipelineConfig) -> int:
    """``run_pipeline.py worker ROLE``: one role in the foreground against a shared Redis and database.

    Camera workers end with their (recorded) sources or on Ctrl-C; re-ID workers and the matcher serve until
    Ctrl-C / SIGTERM, then finish the batch in hand (nothing is acknowledged before it is committed).
    """
    import socket

    redis_url = args.redis or cfg.queue.redis_url
    if not redis_url:
        raise ValueError("worker roles share work through Redis: give --redis URL or queue.redis_url")
    db_url = args.db or cfg.db.url
    tracklets, embeddings = streams(cfg)
    session_key = args.session or make_session_key(cfg, only=args.only)
    wiring = Wiring(db_url, redis_url, None, tracklets, embeddings, session_key, args.device)
    name = args.name or f"{args.role}-{socket.gethostname()}-{os.getpid()}"
    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if args.role == "camera":
        from storage.db import open_store

        open_store(db_url).dispose()  # migrate before the first health report
        only = args.only.split(",") if args.only else None
        camera_process(
            cfg, wiring, stop=stop, only=only, progress=False if args.quiet else None, _in_child=False
        )
    elif args.role == "reid":
        reid_process(cfg, wiring, consumer=name, stop=stop, _in_child=False)
    else:
        matcher_process(cfg, wiring, consumer=name, stop=stop, _in_child=False)
    return 0
