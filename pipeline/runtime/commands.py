"""What the ``run_pipeline.py`` commands run: the full pipeline on this machine, or one role of it.

``run_full`` (``python run_pipeline.py --cameras cams.yaml``): checks every input at the door, connects the
queue (the embedded broker unless a Redis URL is given), opens and migrates the store, starts every role as a
separate process (``spawn``), waits for the cameras to finish (replay) or for Ctrl-C / SIGTERM, then drains:
re-ID workers stop once the tracklet stream is empty, the matcher once the embedding stream is empty, so every
closed tracklet ends in SQL. It prints the summary once, at the end.

``run_role`` (``run_pipeline.py worker ROLE``): one role in the foreground against a shared Redis and store.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from queue import Empty

from pipeline.config import PipelineConfig
from pipeline.runtime.compose import (
    MatchingThreshold,
    Wiring,
    camera_process,
    make_session_key,
    matcher_process,
    reid_process,
    streams,
)
from pipeline.runtime.door import check_at_door
from pipeline.runtime.summary import pipeline_summary, print_summary
from pipeline.runtime.supervise import Supervisor, child_main, held_signals

log = logging.getLogger(__name__)

EXIT_FAILED = 1


def run_full(args, cfg: PipelineConfig) -> int:
    """Run every role as a process on this machine; print the summary. Returns the exit code: 0, or 1 when a
    worker failed (the error is printed last). Bad input raises before anything is started or written."""
    from pipeline.transport.queues import start_local_broker
    from storage.db import open_store

    only = args.only.split(",") if getattr(args, "only", None) else None
    threshold = check_at_door(cfg, cameras=True, reid=True, only=only, out_dir=getattr(args, "out", None))
    db_url = args.db or cfg.db.url
    redis_url = args.redis or cfg.queue.redis_url
    tracklets, embeddings = streams(cfg)
    session_key = make_session_key(cfg, only=getattr(args, "only", None))
    with ExitStack() as cleanup:
        broker = None
        if not redis_url:
            with held_signals():  # the broker, like the workers, must outlive a SIGTERM to the group
                broker = start_local_broker()
                cleanup.callback(broker.shutdown)
        wiring = Wiring(
            db_url,
            redis_url,
            broker.endpoint if broker else None,
            tracklets,
            embeddings,
            session_key,
            args.device,
        )
        queue = wiring.queue(cfg)  # fails fast on an unreachable Redis, before the store is touched
        cleanup.callback(queue.close)
        queue.ensure_group(tracklets, cfg.reid.group)
        queue.ensure_group(embeddings, cfg.matcher.group)
        store = open_store(db_url)  # migrates once here, and fails fast on a bad URL
        cleanup.callback(store.dispose)
        return _supervise_full(args, cfg, wiring, store, only, threshold)


def _supervise_full(
    args, cfg: PipelineConfig, wiring: Wiring, store, only: list[str] | None, threshold: MatchingThreshold
) -> int:
    # children inherit this before they import numpy: the matcher's matrix products are small, and on a
    # small shared machine extra BLAS threads mostly wait for each other (bench/matcher_scale.py)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    stop_cameras, reid_drain, matcher_drain, stop_all = (ctx.Event() for _ in range(4))
    stats_q = ctx.Queue()
    out = getattr(args, "out", None)
    cameras_run = [c.id for c in cfg.enabled_cameras if only is None or c.id in only]
    roles = {
        "matcher": (matcher_process, {"stop": stop_all, "drain": matcher_drain, "expect": cameras_run}),
        "reid": (reid_process, {"stop": stop_all, "drain": reid_drain}),
        "cameras": (
            camera_process,
            {
                "stop": stop_cameras,
                "only": only,
                "out_dir": out,
                "save_video": getattr(args, "save_video", False),
                "stats_out": stats_q,
                "progress": False if getattr(args, "quiet", False) else None,
            },
        ),
    }

    def factory(name: str):
        target, kwargs = roles[name]
        return lambda: ctx.Process(target=child_main, args=(target, cfg, wiring), kwargs=kwargs, name=name)

    def on_stop(signal_name: str, n: int) -> None:
        if n == 1:
            print(
                f"\nstopping ({signal_name}): the cameras stop, then the queues drain into SQL "
                "(Ctrl-C or SIGTERM again to abort)",
                flush=True,
            )
            stop_cameras.set()
        else:
            stop_all.set()

    errors: list[str] = []

    def on_failure(name: str, code: int) -> None:
        if name == "cameras":  # what the cameras published still drains into SQL
            errors.append(f"the camera worker failed (exit code {code})")
            return
        # a re-ID worker or matcher that failed for good: nothing would drain its queue; stop everything now
        errors.append(f"the {name} worker failed (exit code {code}); the run was stopped")
        sup.shutting_down = True
        stop_cameras.set()
        stop_all.set()

    sup = Supervisor(
        {name: factory(name) for name in roles}, restartable={"reid", "matcher"}, on_stop=on_stop
    )
    reports: dict = {}

    def collect_reports() -> None:
        while True:
            try:
                reports.update(stats_q.get_nowait())
            except Empty:
                return

    t0 = time.perf_counter()
    with sup.stop_signals():  # until every worker has exited: a signal meanwhile must not kill the parent
        try:
            sup.start()
            sup.wait("cameras", on_failure=on_failure, tick=collect_reports)
            reid_drain.set()
            sup.wait("reid", on_failure=on_failure)
            matcher_drain.set()
            sup.wait("matcher", on_failure=on_failure)
        finally:
            stop_cameras.set()
            stop_all.set()
            sup.stop()
    collect_reports()
    for name, n in sup.restarts.items():
        if n:
            print(f"note: the {name} worker was restarted {n} time(s) during the run (see the log above)")
    summary = pipeline_summary(store, reports, wall_s=time.perf_counter() - t0, threshold=threshold)
    print_summary(summary)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if errors:
        print(f"error: {'; '.join(errors)} (see the log above)", file=sys.stderr)
        return EXIT_FAILED
    return 0


def run_role(args, cfg: PipelineConfig) -> int:
    """``run_pipeline.py worker ROLE``: one role in the foreground against a shared Redis and database.

    Inputs are checked at the door first (camera role: sources and detector weights; reid and matcher: the
    checkpoint). Camera workers end with their (recorded) sources or on Ctrl-C / SIGTERM; re-ID workers and
    the matcher serve until Ctrl-C / SIGTERM, then finish the batch in hand (nothing is acknowledged before
    it is committed).
    """
    import socket

    redis_url = args.redis or cfg.queue.redis_url
    if not redis_url:
        raise ValueError("worker roles share work through Redis: give --redis URL or queue.redis_url")
    only = args.only.split(",") if args.only else None
    if args.role == "camera":
        check_at_door(cfg, cameras=True, only=only)
    else:
        check_at_door(cfg, reid=True)
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
    if args.role == "camera":
        from storage.db import open_store

        open_store(db_url).dispose()  # migrate before the first health report
        camera_process(cfg, wiring, stop=stop, only=only, progress=False if args.quiet else None)
    elif args.role == "reid":
        reid_process(cfg, wiring, consumer=name, stop=stop)
    else:
        matcher_process(cfg, wiring, consumer=name, stop=stop)
    return 0
