"""Many cameras: per-camera speed and the delay from a tracklet closing to its identity being in SQL.

    python bench/many_cameras.py [--cameras configs/demo.yaml] [--counts 2,4,8] [--max-frames 150]

For each count N it writes a temporary cams.yaml with N cameras made from the demo's videos (taken in
turn; copy k gets the ids ``<id>-k``, start times shifted by k hours, and the demo's topology within the
copy), runs ``run_pipeline.py`` on it (embedded queue, a fresh SQLite file, ``--max-frames``) as a child
process, and prints the per-camera fps of ``summary.json``.

Delay. ``sightings.decided_at`` is the wall time the matcher decided a tracklet's identity (the tracklet row
is written in the same transaction), but the pipeline does not record the wall time a tracklet *closed* in the
camera worker. This bench estimates it from outside, without changing the pipeline: while the run goes on it
polls the ``cameras`` table, where the camera worker's health reporter writes every 2 s how many frames each
source has read (``frames``) and when (``updated_at``). That gives, per camera, the wall time at which frame f
was read (linear interpolation between reports). A tracklet closes at the frame ``last_frame + max_gap + 1``
(its track has been absent for more than ``max_gap`` frames), or when its camera's footage ends (flush),
whichever is first; the reader thread reads up to ``READ_AHEAD`` frames ahead of the frame being processed, so
the closing frame is processed when ``closing frame + 1 + READ_AHEAD`` frames have been read; the last health
report is written after the camera stage has ended (every camera flushed), which anchors the tracklets flushed
at the end of the footage. delay = decided_at - that wall time. It covers publishing, the re-ID worker
(batching wait + encoding), the embedding stream and the matcher's commit. Error: a few frames of the camera's
processing time (health reports are 2 s apart; the read-ahead is the queue bound, exact only when the detector
is the bottleneck, which it is on CPU). Tracklets closing before the first health report are left out
(``delay_n`` says how many were measured). The exact figure needs one small pipeline change: a wall-clock
``closed_at`` set by the tracklet builder when it closes a piece, carried in the tracklet message and stored
in ``tracklets``; then delay = decided_at - closed_at in SQL.

Last line: one JSON object with ``fps_per_camera_N`` (mean of the cameras' fps), ``delay_s_p50_N`` and
``delay_s_p95_N`` for each count N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay import tree_rss  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from storage.models import CameraRow, SightingRow, TrackletRow  # noqa: E402

READ_AHEAD = 5  # camera.py: a reader queue of 4 frames plus the one blocked in put()
POLL_S = 0.25


def _absolute(value: str, base: Path) -> str:
    return str((base / value).resolve()) if "/" in value and not Path(value).is_absolute() else value


def many_cameras_config(demo_yaml: Path, n: int) -> dict:
    """The demo config with ``n`` cameras: the demo's cameras taken in turn, copy k as ``<id>-k``."""
    raw = yaml.safe_load(demo_yaml.read_text())
    base = demo_yaml.resolve().parent
    demo = raw["cameras"]
    cams = []
    for i in range(n):
        k, c = divmod(i, len(demo))
        cam = dict(demo[c])
        cam["id"] = f"{cam['id']}-{k}"
        cam["source"] = _absolute(cam["source"], base)
        if "start_time" in cam:
            start = datetime.fromisoformat(str(cam["start_time"])) + timedelta(hours=k)
            cam["start_time"] = start.isoformat()
        cams.append(cam)
    ids = {c["id"] for c in cams}
    copies = range((n + len(demo) - 1) // len(demo))
    topo = raw.get("topology", {})
    overlaps = [[f"{a}-{k}", f"{b}-{k}"] for k in copies for a, b in topo.get("overlaps", [])]
    links = [
        {**link, "cameras": [f"{a}-{k}", f"{b}-{k}"]}
        for k in copies
        for link in topo.get("links", [])
        for a, b in [link["cameras"]]
    ]
    raw["cameras"] = cams
    raw["topology"] = {
        "overlaps": [p for p in overlaps if set(p) <= ids],
        "links": [link for link in links if set(link["cameras"]) <= ids],
    }
    raw["detector"]["weights"] = _absolute(raw["detector"]["weights"], base)
    raw.pop("db", None)  # --db is given on the command line
    return raw


class HealthPoller(threading.Thread):
    """Records every distinct (camera, updated_at, frames) health report of the store while the run goes on."""

    def __init__(self, db_url: str):
        super().__init__(name="health-poller", daemon=True)
        self.engine = sa.create_engine(db_url)
        self.halt = threading.Event()
        self.reports: dict[str, dict[float, int]] = {}

    def run(self) -> None:
        query = sa.select(CameraRow.id, CameraRow.updated_at, CameraRow.frames)
        while not self.halt.wait(POLL_S):
            self.poll(query)
        self.poll(query)

    def poll(self, query) -> None:
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).all()
        except sa.exc.OperationalError:  # the file or table does not exist yet, or is locked for a moment
            return
        for cid, updated, frames in rows:
            if updated is not None:
                self.reports.setdefault(cid, {})[updated.timestamp()] = frames

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.engine.dispose()


def processed_curve(by_time: dict[float, int]) -> tuple[np.ndarray, np.ndarray]:
    """(frames processed, wall time) points of one camera, strictly increasing in frames.

    While the source is being read, processed = read - READ_AHEAD, taken at the first report of each count.
    The last report is written after the camera stage ended (its camera flushed), when all n frames were
    processed: the point (n, last wall time).
    """
    walls = sorted(by_time)
    n = max(by_time.values())
    first: dict[int, float] = {}
    for w in walls:
        first.setdefault(by_time[w], w)
    pts = [(f - READ_AHEAD, w) for f, w in sorted(first.items()) if READ_AHEAD < f < n]
    pts.append((n, walls[-1]))
    done, at = np.array(pts, dtype=float).T
    return done, at


def closing_delays(
    db_url: str, reports: dict[str, dict[float, int]], *, max_gap: int
) -> list[tuple[float, bool]]:
    """(decided_at - estimated wall time of closing in s, closed by the final flush) per placeable tracklet."""
    engine = sa.create_engine(db_url)
    query = sa.select(TrackletRow.camera_id, TrackletRow.last_frame, SightingRow.decided_at).join(
        SightingRow, SightingRow.tracklet_id == TrackletRow.id
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    engine.dispose()
    curves = {cid: processed_curve(by_time) for cid, by_time in reports.items() if by_time}
    delays = []
    for cid, last_frame, decided_at in rows:
        if cid not in curves:
            continue
        done, walls = curves[cid]
        n = int(done[-1])
        closing = min(last_frame + max_gap + 1, n - 1)  # absent for > max_gap frames, or the flush at the end
        if closing + 1 < done[0]:
            continue  # before the first health report: no anchor
        closed_wall = float(np.interp(closing + 1, done, walls))
        delays.append((decided_at.timestamp() - closed_wall, closing == n - 1))
    return delays


def run_once(demo_yaml: Path, n: int, max_frames: int, tmp: Path) -> dict:
    cams_yaml = tmp / f"cams{n}.yaml"
    cams_yaml.write_text(yaml.safe_dump(many_cameras_config(demo_yaml, n), sort_keys=False))
    cfg = load_config(cams_yaml)  # fails here, naming the key, if the generated config is wrong
    db_url = f"sqlite:///{tmp}/bench{n}.db"
    out = tmp / f"out{n}"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--cameras", str(cams_yaml), "--quiet"]
    cmd += ["--db", db_url, "--out", str(out), "--max-frames", str(max_frames)]
    poller = HealthPoller(db_url)
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poller.start()
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    poller.stop()
    _, stderr = child.communicate()
    if child.returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"run_pipeline.py with {n} cameras exited with {child.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    fps = {cid: c["fps"] for cid, c in summary["cameras"].items()}
    delays = closing_delays(db_url, poller.reports, max_gap=cfg.tracklets.max_gap)
    return {
        "fps": fps,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "tracklets": summary["tracklets_in_sql"],
        "identities": summary["identities"],
        "delays": delays,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cameras", default=str(ROOT / "configs" / "demo.yaml"), help="the demo config to copy")
    ap.add_argument("--counts", default="2,4,8", help="comma-separated numbers of cameras")
    ap.add_argument("--max-frames", type=int, default=150, help="frames per camera")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    result: dict = {"max_frames": args.max_frames}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            r = run_once(Path(args.cameras), n, args.max_frames, Path(tmp))
            mean_fps = float(np.mean(list(r["fps"].values())))
            print(
                f"{n} cameras: wall {r['wall_s']} s, peak RSS {r['peak_rss_mb']} MB, "
                f"tracklets {r['tracklets']}, identities {r['identities']}"
            )
            for cid, f in r["fps"].items():
                print(f"  {cid:<16}{f:>8.2f} fps")
            result[f"fps_per_camera_{n}"] = round(mean_fps, 2)
            result[f"fps_total_{n}"] = round(sum(r["fps"].values()), 2)
            result[f"wall_s_{n}"] = r["wall_s"]
            result[f"peak_rss_mb_{n}"] = r["peak_rss_mb"]
            d = np.array([delay for delay, _ in r["delays"]])
            result[f"delay_n_{n}"] = int(d.size)
            result[f"delay_n_flushed_{n}"] = sum(flushed for _, flushed in r["delays"])
            if d.size:
                p50, p95 = np.percentile(d, [50, 95])
                result[f"delay_s_p50_{n}"] = round(float(p50), 2)
                result[f"delay_s_p95_{n}"] = round(float(p95), 2)
                print(
                    f"  close -> identity in SQL: p50 {p50:.2f} s, p95 {p95:.2f} s, "
                    f"max {d.max():.2f} s over {d.size} tracklets "
                    f"({result[f'delay_n_flushed_{n}']} closed by the flush at the end)"
                )
            else:
                print("  close -> identity in SQL: no tracklet could be placed")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
