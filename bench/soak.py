"""Soak: the whole pipeline on the demo footage replayed in a loop for a while; memory and queue lag over time.

    python bench/soak.py [--minutes 30] [--warmup-min 1] [--cameras configs/demo.yaml] [--redis URL] [--sample-s 5]

One long run, not a loop of runs: a loop of ``run_pipeline.py`` runs starts fresh processes each time, so
it cannot show memory that grows inside a long-lived worker. The bench writes a copy of the demo config
(paths made absolute, ``db:`` left to ``--db``) with ``replay.loop: true`` (and no ``replay.max_frames``):
each camera's video is decoded as in the demo and re-opened at its end, frame indices and timestamps
carried on, so to the pipeline every camera goes on until it is stopped. After ``--minutes`` the bench
sends Ctrl-C (SIGINT) to ``run_pipeline.py``: cameras flush, the queues drain, and the summary is written;
the figures below use the samples before that signal. If the run ends before (it should not: the
footage loops), the bench says so.

Every ``--sample-s`` seconds one line: minutes since start, summed RSS of ``run_pipeline.py`` and all its
worker processes (the broker included; shared pages are counted once per process, as in
``bench/replay.py``), the rows in SQL (tracklets, identities), and the queue lag (entries not yet
finished by the ``reid`` group on the tracklet stream and by the ``matcher`` group on the embedding
stream). Lag can be read only with ``--redis``: the embedded broker's address and key live inside the
``run_pipeline.py`` process and are not exposed, so with it the lag is printed as ``n/a`` and
``lag_max`` is null. With ``--redis`` the run uses streams of its own (``soak-<random>:...``), deleted at
the end.

At the end: RSS at the end of the warm-up (``--warmup-min``), at the end of the soak, the maximum after
the warm-up, and the least-squares slope in MB/min after the warm-up. What the slope is not: the matcher's
gallery grows with every new identity (looped footage re-enters as new tracklets, some of which become new
identities), so a small positive slope is expected; compare it with the identity count.

Last line: one JSON object with ``rss_mb_warm``, ``rss_mb_end``, ``rss_mb_max_after_warm``,
``rss_slope_mb_per_min``, ``lag_max``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import sqlalchemy as sa
import yaml
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.samples import resolve_sample  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.transport.queues import QueueError, open_queue  # noqa: E402
from storage import repository as repo  # noqa: E402


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """Summed RSS (bytes) of ``proc`` and its descendants, and how many processes that was."""
    total, n = 0, 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
            n += 1
        except psutil.Error:
            pass
    return total, n


def soak_config(demo_yaml: Path, tmp: Path) -> Path:
    """A copy of the demo config whose cameras loop (``replay.loop: true``), with absolute paths; returns
    its path."""
    cfg = load_config(demo_yaml)  # resolved, validated paths
    raw = yaml.safe_load(demo_yaml.read_text())
    by_id = {c.id: c for c in cfg.cameras}
    for cam in raw["cameras"]:
        c = by_id[cam["id"]]
        cam["source"] = resolve_sample(c.source) if c.source_kind in ("file", "images") else c.source
        print(f"{c.id}: {cam['source']} (looped: replay.loop)")
    raw["detector"]["weights"] = str(resolve_sample(cfg.detector.weights))
    raw["replay"] = {**(raw.get("replay") or {}), "loop": True, "max_frames": None}
    raw.pop("db", None)  # --db is given on the command line
    path = tmp / "soak.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(path)  # fails here, naming the key, if the generated config is wrong
    return path


def row_counts(engine: sa.Engine) -> dict[str, int] | None:
    try:
        with Session(engine) as s:
            return repo.counts(s)
    except sa.exc.OperationalError:  # not migrated yet, or locked for a moment
        return None


def read_lag(queue, streams: tuple[str, str]) -> tuple[int, int] | None:
    try:
        return queue.lag(streams[0], "reid"), queue.lag(streams[1], "matcher")
    except QueueError:  # groups not created yet
        return None


def summarise(samples: list[dict], warmup_min: float) -> dict:
    after = [s for s in samples if s["t_min"] >= warmup_min]
    if len(after) < 2:
        return {
            "rss_mb_warm": None,
            "rss_mb_end": None,
            "rss_mb_max_after_warm": None,
            "rss_slope_mb_per_min": None,
        }
    t = np.array([s["t_min"] for s in after])
    rss = np.array([s["rss_mb"] for s in after])
    slope = np.polyfit(t, rss, 1)[0]
    return {
        "rss_mb_warm": round(float(rss[0]), 1),
        "rss_mb_end": round(float(rss[-1]), 1),
        "rss_mb_max_after_warm": round(float(rss.max()), 1),
        "rss_slope_mb_per_min": round(float(slope), 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", default=str(ROOT / "configs" / "demo.yaml"), help="the demo config to loop")
    ap.add_argument("--minutes", type=float, default=30.0, help="soak duration")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--warmup-min", type=float, default=1.0, help="minutes left out of the trend")
    ap.add_argument("--redis", metavar="URL", help="use Redis instead of the embedded broker; lag is read")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cams_yaml = soak_config(Path(args.cameras), tmp)
        db_url = f"sqlite:///{tmp}/soak.db"
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--cameras", str(cams_yaml), "--quiet"]
        cmd += ["--db", db_url, "--out", str(tmp / "out")]
        queue, streams = None, ("", "")
        if args.redis:
            prefix = f"soak-{uuid.uuid4().hex[:8]}"
            cmd += ["--redis", args.redis, "--set", f"queue.stream_prefix={prefix}"]
            streams = (f"{prefix}:tracklets", f"{prefix}:embeddings")
            queue_cfg = load_config(args.cameras).queue
            queue = open_queue(args.redis, maxlen=queue_cfg.maxlen, max_deliveries=queue_cfg.max_deliveries)
        else:
            print("queue lag: n/a (embedded broker: its address and key are private to run_pipeline.py)")
        engine = sa.create_engine(db_url)
        samples: list[dict] = []
        t0 = time.perf_counter()
        # files, not pipes: nobody reads a pipe during the soak, and a full one would stall the run
        out_f, err_f = open(tmp / "stdout.txt", "w"), open(tmp / "stderr.txt", "w")
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=out_f, stderr=err_f, text=True)
        proc = psutil.Process(child.pid)
        print(
            f"{'min':>6}{'rss_mb':>9}{'procs':>6}{'tracklets':>10}{'identities':>11}{'lag_reid':>9}{'lag_match':>10}"
        )
        stopped_at = None
        while child.poll() is None:
            t_min = (time.perf_counter() - t0) / 60
            if stopped_at is None and t_min >= args.minutes:
                child.send_signal(signal.SIGINT)
                stopped_at = t_min
                print(f"{t_min:6.2f}  soak time over: Ctrl-C sent, cameras flush and the queues drain")
            rss, nprocs = tree_rss(proc)
            counts = row_counts(engine) or {}
            lag = read_lag(queue, streams) if queue is not None else None
            sample = {
                "t_min": round(t_min, 3),
                "rss_mb": round(rss / 2**20, 1),
                "procs": nprocs,
                "tracklets": counts.get("tracklets"),
                "identities": counts.get("identities"),
                "lag": lag,
                "draining": stopped_at is not None,
            }
            if stopped_at is None:
                samples.append(sample)
            lag_txt = (f"{lag[0]:>9}{lag[1]:>10}") if lag else f"{'n/a':>9}{'n/a':>10}"
            print(
                f"{t_min:6.2f}{sample['rss_mb']:>9.1f}{nprocs:>6}{sample['tracklets'] or 0:>10}"
                f"{sample['identities'] or 0:>11}{lag_txt}",
                flush=True,
            )
            deadline = time.perf_counter() + args.sample_s
            while child.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.2)
        wall_min = (time.perf_counter() - t0) / 60
        out_f.close()
        err_f.close()
        stdout, stderr = (tmp / "stdout.txt").read_text(), (tmp / "stderr.txt").read_text()
        engine.dispose()
        if queue is not None:
            import redis

            redis.Redis.from_url(args.redis).delete(*streams)
            queue.close()
        if child.returncode != 0:
            print(stderr[-3000:], file=sys.stderr)
            return child.returncode
        summary = json.loads((tmp / "out" / "summary.json").read_text())
    print(stdout.strip())
    if stopped_at is None:
        print(f"note: run_pipeline.py ended by itself after {wall_min:.1f} min, before the soak time")
    result = summarise(samples, args.warmup_min)
    lags = [max(s["lag"]) for s in samples if s["lag"]]
    result |= {
        "minutes": round(stopped_at if stopped_at is not None else wall_min, 2),
        "drain_s": round((wall_min - stopped_at) * 60, 1) if stopped_at is not None else None,
        "samples": len(samples),
        "lag_max": max(lags) if lags else None,
        "frames": {cid: c["frames"] for cid, c in summary["cameras"].items()},
        "fps": {cid: c["fps"] for cid, c in summary["cameras"].items()},
        "tracklets": summary["tracklets_in_sql"],
        "identities": summary["identities"],
    }
    print(
        f"RSS after warm-up ({args.warmup_min:g} min): {result['rss_mb_warm']} MB, at the end: "
        f"{result['rss_mb_end']} MB, max after warm-up: {result['rss_mb_max_after_warm']} MB, "
        f"slope: {result['rss_slope_mb_per_min']} MB/min; lag max: {result['lag_max']}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
