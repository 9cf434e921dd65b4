"""Many cameras: per-camera speed and the delay from a tracklet's publication to its identity being in SQL.

    python bench/many_cameras.py [--cameras configs/demo.yaml] [--counts 2,4,8] [--max-frames 150]

For each count N it writes a temporary cams.yaml with N cameras made from the demo's videos (taken in
turn; copy k gets the ids ``<id>-k``), runs ``run_pipeline.py`` on it (embedded queue, a fresh SQLite file,
``--max-frames``) as a child process, and prints the per-camera fps of ``summary.json`` and the peak RSS of
the process tree.

All N cameras start at the demo's first start time: N cameras recording at once, which the replay clock
(``CameraGroup._pick``) plays side by side (with the demo's staggered start times a later camera would wait
for the clock to reach it). Each copy gets the demo's topology among its own cameras only; with links or
overlaps configured, the matcher's ``Topology`` closes every pair not listed, so no identity spans two
copies. Per-camera fps is frames / wall time from the start of the camera stage to the end of that camera.

Delay, exact, per tracklet, from SQL after the run: ``sightings.decided_at - tracklets.published_at``. The
camera worker stamps ``published_at`` when it publishes a closed tracklet; the matcher stamps
``decided_at`` when it commits the identity (with the tracklet row, in one transaction). In between: the
re-ID worker (batching wait and encoding), the embedding stream, the matcher's ordering wait (a closing-time
bucket is decided only once every camera has passed it, docs/matcher.md, "Order") and the SQL commit. It
does not include the time before publication (the ``max_gap`` frames a track must be absent to close).
Both stamps are wall clocks of the same machine. Tracklets without ``published_at`` (a producer without
ordering) are left out; ``delay_n`` says how many were measured.

Last line: one JSON object with ``fps_per_camera_N`` (mean of the cameras' fps), ``delay_s_p50_N``,
``delay_s_p95_N`` and ``delay_n_N`` for each count N.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay import run_watched  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from storage.models import SightingRow, TrackletRow  # noqa: E402


def _absolute(value: str, base: Path) -> str:
    return str((base / value).resolve()) if "/" in value and not Path(value).is_absolute() else value


def many_cameras_config(demo_yaml: Path, n: int) -> dict:
    """The demo config with ``n`` cameras: the demo's cameras taken in turn, copy k as ``<id>-k``, every
    camera starting at the demo's first start time (``n`` cameras recording at once: recorded cameras replay
    on one clock, so staggered start times would run them one after another), and the demo's topology among
    each copy's own cameras.

    Raises ValueError when there is more than one copy but no topology pair survives: the matcher would then
    leave every pair open and link identities across copies."""
    raw = yaml.safe_load(demo_yaml.read_text())
    base = demo_yaml.resolve().parent
    demo = raw["cameras"]
    start = min(str(c["start_time"]) for c in demo)
    cams = []
    for i in range(n):
        k, c = divmod(i, len(demo))
        cam = dict(demo[c])
        cam["id"] = f"{cam['id']}-{k}"
        cam["start_time"] = start
        cam["source"] = _absolute(cam["source"], base)
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
    if len(copies) > 1 and not (raw["topology"]["overlaps"] or raw["topology"]["links"]):
        raise ValueError(
            f"{demo_yaml}: {n} cameras make {len(copies)} copies but no topology pair within a copy; "
            "an empty topology leaves every pair open, so identities would be linked across copies"
        )
    raw["detector"]["weights"] = _absolute(raw["detector"]["weights"], base)
    raw.pop("db", None)  # --db is given on the command line
    return raw


def publish_to_decision_delays(db_url: str) -> list[float]:
    """``decided_at - published_at`` in seconds, one per tracklet with a sighting and a ``published_at``."""
    engine = sa.create_engine(db_url)
    query = (
        sa.select(TrackletRow.published_at, SightingRow.decided_at)
        .join(SightingRow, SightingRow.tracklet_id == TrackletRow.id)
        .where(TrackletRow.published_at.is_not(None))
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    engine.dispose()
    return [(decided - published).total_seconds() for published, decided in rows]


def run_once(demo_yaml: Path, n: int, max_frames: int, tmp: Path) -> dict:
    cams_yaml = tmp / f"cams{n}.yaml"
    cams_yaml.write_text(yaml.safe_dump(many_cameras_config(demo_yaml, n), sort_keys=False))
    load_config(cams_yaml)  # fails here, naming the key, if the generated config is wrong
    db_url = f"sqlite:///{tmp}/bench{n}.db"
    out = tmp / f"out{n}"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--cameras", str(cams_yaml), "--quiet"]
    cmd += ["--db", db_url, "--out", str(out), "--max-frames", str(max_frames)]
    returncode, _, stderr, wall, peak = run_watched(cmd)
    if returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"run_pipeline.py with {n} cameras exited with {returncode}")
    summary = json.loads((out / "summary.json").read_text())
    fps = {cid: c["fps"] for cid, c in summary["cameras"].items()}
    delays = publish_to_decision_delays(db_url)
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
            d = np.array(r["delays"])
            result[f"delay_n_{n}"] = int(d.size)
            if d.size:
                p50, p95 = np.percentile(d, [50, 95])
                result[f"delay_s_p50_{n}"] = round(float(p50), 2)
                result[f"delay_s_p95_{n}"] = round(float(p95), 2)
                print(
                    f"  publish -> identity in SQL: p50 {p50:.2f} s, p95 {p95:.2f} s, "
                    f"max {d.max():.2f} s over {d.size} tracklets"
                )
            else:
                print("  publish -> identity in SQL: no tracklet with published_at and a sighting")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
