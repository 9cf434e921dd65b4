#!/usr/bin/env python3
"""Multi-camera person re-identification: the composition root.

    python run_pipeline.py --cameras configs/demo.yaml                      # whole pipeline
    python run_pipeline.py --cameras cams.yaml --until tracklets --out DIR  # camera stage only
    python run_pipeline.py worker camera|reid|matcher --cameras cams.yaml   # one role, for several machines
    python run_pipeline.py query identities|timeline --db URL ...           # ask the store
    python run_pipeline.py query export --db URL --format mot --out DIR     # MOT files with global ids
    python run_pipeline.py serve --db URL                                   # web pages and JSON API
    python run_pipeline.py render --db URL --camera ID --out FILE.mp4       # video with global identities
    python run_pipeline.py forget --db URL --identity ID                    # delete a person for good
    python run_pipeline.py prune --db URL --days N                          # retention

It loads and validates the config, builds the detector, trackers, re-ID encoder, queue and store, and
passes them to the stages. Bad input ends with a one-line ``error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # models are never fetched from a hub at run time

EXIT_BAD_INPUT = 2


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--cameras", required=True, metavar="FILE", help="cams.yaml (see configs/cams.example.yaml)"
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--device", help="auto, cpu, cuda, cuda:N (detector and re-ID)")
    ap.add_argument("--realtime", action="store_true", help="pace file replay to real time")
    ap.add_argument("--max-frames", type=int, metavar="N", help="stop each camera after N frames")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument(
        "--db", metavar="URL", help="SQLAlchemy URL of the store (default: db.url, a SQLite file)"
    )
    ap.add_argument(
        "--redis", metavar="URL", help="Redis URL (default: queue.redis_url, else in-process queues)"
    )


def main_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run_pipeline.py", description=__doc__.split("\n\n")[0])
    _common(ap)
    ap.add_argument("--until", choices=["tracklets"], help="stop after this stage (writes files to --out)")
    ap.add_argument("--out", metavar="DIR", help="output folder (MOT files, tracklets, videos, summary)")
    ap.add_argument("--save-video", action="store_true", help="write an annotated video per camera to --out")
    ap.add_argument("--only", help="comma-separated camera ids to run (default: all enabled)")
    return ap


def worker_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="run_pipeline.py worker",
        description="Run one role against a shared Redis and database (one machine per role, or several).",
    )
    ap.add_argument("role", choices=["camera", "reid", "matcher"])
    _common(ap)
    ap.add_argument("--only", help="camera role: comma-separated camera ids (default: all enabled)")
    ap.add_argument("--name", help="consumer name in the group (default: role-hostname-pid)")
    ap.add_argument("--session", help="camera role: run key stored with its tracklets (default: start time)")
    return ap


def query_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run_pipeline.py query", description="Ask the store.")
    sub = ap.add_subparsers(dest="what", required=True)
    ids = sub.add_parser("identities", help="identities with their cameras and times")
    ids.add_argument("--db", required=True, metavar="URL")
    ids.add_argument("--min-cameras", type=int, default=1)
    tl = sub.add_parser("timeline", help="where one identity was, camera by camera")
    tl.add_argument("--db", required=True, metavar="URL")
    tl.add_argument("--identity", type=int, required=True, metavar="ID")
    tl.add_argument("--since", metavar="TIME", help="ISO 8601 (UTC if no offset)")
    tl.add_argument("--until", metavar="TIME", help="ISO 8601 (UTC if no offset)")
    tl.add_argument("--plot", metavar="FILE.png", help="draw the timeline (cameras x time)")
    return ap


def load(args: argparse.Namespace):
    from pipeline.config import load_config

    overrides = list(args.set)
    if args.realtime:
        overrides.append("replay.realtime=true")
    if args.max_frames is not None:
        overrides.append(f"replay.max_frames={args.max_frames}")
    return load_config(args.cameras, overrides)


def run_tracklets_only(args: argparse.Namespace) -> int:
    from pipeline.runtime.door import check_at_door
    from pipeline.runtime.summary import camera_summary, print_camera_table

    cfg = load(args)
    if not args.out:
        raise ValueError("--until tracklets needs --out DIR")
    only = args.only.split(",") if args.only else None
    check_at_door(cfg, cameras=True, only=only, out_dir=args.out)
    from models.runtime import configure_torch  # torch: only once the door has passed
    from pipeline.camera.stage import build_detector, run_camera_stage

    configure_torch()
    detector = build_detector(cfg, device=args.device)
    stats = run_camera_stage(
        cfg,
        out_dir=args.out,
        detector=detector,
        save_video=args.save_video,
        only=only,
        progress=False if args.quiet else None,
        on_start=_stop_on_signals,
    )
    cameras = camera_summary({cid: s.report() for cid, s in stats.items()})
    summary = {"cameras": cameras, "out": str(Path(args.out).resolve())}
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_camera_table(cameras)
    return 0


def _stop_on_signals(group) -> None:
    """Ctrl-C / SIGTERM: ask the running stage to stop; it flushes and closes its outputs itself."""

    def handler(signum, _frame):
        group.stop()
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from pipeline.camera.detector import DetectorError
    from pipeline.camera.sources import SourceError
    from pipeline.config import ConfigError
    from pipeline.transport.queues import QueueError
    from storage.db import StoreError

    try:
        if argv[:1] == ["serve"]:
            from pipeline.web.__main__ import main as serve

            return serve(argv[1:], prog="run_pipeline.py serve")
        if argv[:1] == ["render"]:
            from pipeline.tools import render

            return render.run(
                render.parser("run_pipeline.py render").parse_args(argv[1:]), prog="run_pipeline.py render"
            )
        if argv[:1] in (["forget"], ["prune"]) or argv[:2] == ["query", "export"]:
            from pipeline.tools import manage

            rest = argv[2:] if argv[0] == "query" else argv[1:]
            command = "export" if argv[0] == "query" else argv[0]
            return manage.run(
                manage.parser("run_pipeline.py").parse_args([command, *rest]), prog="run_pipeline.py"
            )
        if argv and argv[0] == "query":
            from pipeline.tools.query import run_query

            return run_query(query_parser().parse_args(argv[1:]))
        if argv and argv[0] == "worker":
            from pipeline.runtime.commands import run_role

            args = worker_parser().parse_args(argv[1:])
            return run_role(args, load(args))
        args = main_parser().parse_args(argv)
        if args.until == "tracklets":
            return run_tracklets_only(args)
        from pipeline.runtime.commands import run_full

        return run_full(args, load(args))
    except (
        ConfigError,
        DetectorError,
        SourceError,
        StoreError,
        QueueError,
        FileNotFoundError,
        ValueError,
        KeyError,
    ) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
