"""Demo replay speed: the whole pipeline on the demo footage, in multiples of real time, and peak memory.

    python bench/replay.py [--cameras configs/demo.yaml] [--max-frames N]

Runs ``run_pipeline.py`` (embedded queue, a fresh SQLite file) as a child process and samples the resident
memory of it and all its worker processes every 0.2 s. ``replay_x_realtime`` = footage seconds replayed
(the longest camera's duration, as the cameras run in parallel) / wall seconds; above 1 means faster than
live. ``peak_rss_mb`` is the peak of the summed RSS of the process tree. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.camera.sources import open_source  # noqa: E402
from pipeline.config import load_config  # noqa: E402


def footage_seconds(cfg, max_frames: int | None) -> dict[str, float]:
    out = {}
    for c in cfg.enabled_cameras:
        with open_source(c.id, c.source, fps=c.fps) as src:
            n = src.num_frames or 0
            if max_frames:
                n = min(n, max_frames)
            out[c.id] = n / (src.fps or 25.0)
    return out


def run_watched(cmd: list[str]) -> tuple[int, str, str, float, float]:
    """Run ``cmd`` from the repository root; return (exit code, stdout, stderr, wall seconds, peak tree RSS)."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    stdout, stderr = child.communicate()
    return child.returncode, stdout, stderr, wall, peak


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--max-frames", type=int)
    args = ap.parse_args(argv)
    cfg = load_config(args.cameras)
    seconds = footage_seconds(cfg, args.max_frames)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--cameras", args.cameras, "--quiet"]
        cmd += ["--db", f"sqlite:///{tmp}/bench.db", "--out", f"{tmp}/out"]
        if args.max_frames:
            cmd += ["--max-frames", str(args.max_frames)]
        returncode, stdout, stderr, wall, peak = run_watched(cmd)
        if returncode != 0:
            print(stderr[-3000:], file=sys.stderr)
            return returncode
        summary = json.loads(Path(tmp, "out", "summary.json").read_text())
    print(stdout.strip())
    longest = max(seconds.values())
    result = {
        "footage_s": {k: round(v, 1) for k, v in seconds.items()},
        "wall_s": round(wall, 1),
        "replay_x_realtime": round(longest / wall, 3),
        "frames_per_s_total": round(sum(c["frames"] for c in summary["cameras"].values()) / wall, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "tracklets": summary["tracklets_in_sql"],
        "identities": summary["identities"],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
