"""Which tracker should be the default? Every tracker of ``trackers.TRACKERS`` through the PETS09 split view.

    python bench/trackers.py [--variant plain|unlike|both] [--trackers NAME,NAME] [--parts splitview,speed]
                             [--work DIR]

For each tracker (default: all, in the dict's order) and each variant (default ``plain``) this runs
:func:`bench.splitview.run_variant` with ``--set tracker.name=<name>``: the whole pipeline on the two
virtual cameras cut from frames 1-400 of vtest.avi, scored against the person-level ground truth of
``../shared/data/pets09-splitview-dev`` (see ``bench/splitview.py`` for the clips, the config and the
variants). Every other setting is the config schema's default; ``tracker.params`` stays ``{}``, so each
tracker runs with boxmot's own defaults (what a user gets by naming it). Appearance trackers (botsort,
strongsort, deepocsort) use the adapter's default ReID weights, ``trackers.DEFAULT_REID_WEIGHTS`` (OSNet
x0.25 MSMT17 under ``../shared/assets/reid``); nothing is downloaded.

Figures per tracker and variant (fractions in [0, 1]):

- ``idf1_left``, ``idf1_right``: per-camera IDF1 with the tracker's own ids. vtest.avi has ground truth only
  in the split view's frames 1-400, so these are the per-camera measure on vtest; ``idf1_mean`` is their mean.
- ``oracle_idf1``: joint IDF1 when every track is linked to the right person: the ceiling these tracks allow
  the matcher (tracklet quality). ``no_linking_idf1``: every track its own identity.
- ``joint_idf1``: joint multi-camera IDF1 with the matcher's identities (the end result), with ``merges`` and
  ``people_linked`` (of ``people_multi_camera``).
- ``fps``: the camera stage's frames per second, mean of the two cameras, as the run reports it (decoding,
  detection, tracking, cropping; on a shared CPU, so only large differences mean something); ``wall_s``.
- ``tracker_ms_per_frame`` (part ``speed``): the tracker alone, in this process. The plain clips are decoded
  and run through the detector once (the schema's default detector settings with the split view's detector);
  then each tracker, a fresh instance per camera, is timed on ``update`` over the same 2 x 400 frames and
  their detections (its first frame, where lazy set-up happens, is run once before and the tracker reset).
  ``dets_per_frame`` is the mean number of detections it was given.

A tracker that cannot be built here (missing ReID weights, missing package...) or whose run fails is
reported with the reason (``error``) instead of stopping the benchmark.

Output: progress on stderr, a table on stdout and, as the last line, one JSON object: one key per tracker
(its figures, the ``unlike`` variant's prefixed ``unlike_``, or ``{"error": ...}``), then
``best_by_oracle_idf1``, ``best_by_joint_idf1``, ``best_by_idf1_mean`` (plain variant; ``unlike_best_by_...``
for the unlike variant when it ran), ``current_default`` and ``variants``.

These labels are for evaluation only; choosing a tracker from these figures is allowed by the data's README,
and a choice made from them must say so.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.splitview import (  # noqa: E402
    CAMERAS,
    DETECTOR,
    FPS,
    SPLIT,
    VTEST,
    PipelineRunError,
    build_clips,
    run_variant,
)
from pipeline.config import DetectorConfig, TrackerConfig  # noqa: E402
from trackers import DEFAULT_REID_WEIGHTS, TRACKERS, build_tracker  # noqa: E402

KEPT = (
    "idf1_left",
    "idf1_right",
    "idf1_mean",
    "oracle_idf1",
    "joint_idf1",
    "no_linking_idf1",
    "joint_hota",
    "oracle_hota",
    "merges",
    "people_linked",
    "oracle_people_linked",
    "people_multi_camera",
    "identities",
    "fps",
    "wall_s",
)
RANKED = ("oracle_idf1", "joint_idf1", "idf1_mean")


def cannot_run(name: str) -> str | None:
    """Why tracker ``name`` cannot be built here, or None when it can (built once in this process and dropped)."""
    try:
        build_tracker(name, frame_rate=FPS)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def tracker_speed(names: list[str], work: Path) -> dict[str, dict[str, float]]:
    """``tracker_ms_per_frame`` and ``dets_per_frame`` of each tracker in ``names`` on the plain clips."""
    from models.runtime import configure_torch
    from pipeline.camera.detector import PersonDetector

    configure_torch()
    d = DetectorConfig()
    detector = PersonDetector(DETECTOR, imgsz=640, conf=d.conf, iou=d.iou, classes=d.classes, batch=d.batch)
    clips = build_clips("plain", work / "clips" / "plain")
    spent = dict.fromkeys(names, 0.0)
    frames_seen = 0
    dets_seen = 0
    for cam in CAMERAS:  # one camera's frames in memory at a time (400 x 340x576x3 bytes = 235 MB)
        cap = cv2.VideoCapture(str(clips[cam]))
        frames: list[np.ndarray] = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        cap.release()
        dets = []
        for i in tqdm(range(0, len(frames), d.batch), desc=f"detect {cam}", unit="batch"):
            dets += detector.detect(frames[i : i + d.batch])
        frames_seen += len(frames)
        dets_seen += sum(len(x) for x in dets)
        for name in names:
            tracker = build_tracker(name, frame_rate=FPS)
            tracker.update(dets[0], frames[0])  # lazy set-up (first ReID call) outside the timing
            tracker.reset()
            t0 = time.perf_counter()
            for det, frame in tqdm(
                zip(dets, frames, strict=True), total=len(frames), desc=f"{name} {cam}", unit="fr"
            ):
                tracker.update(det, frame)
            spent[name] += time.perf_counter() - t0
    return {
        name: {
            "tracker_ms_per_frame": round(1000 * t / frames_seen, 2),
            "dets_per_frame": round(dets_seen / frames_seen, 2),
        }
        for name, t in spent.items()
    }


def condense(figs: dict[str, float | int | None]) -> dict[str, float | int | None]:
    """The figures this benchmark reports, from :func:`bench.splitview.run_variant`'s flat dict."""
    left, right = figs.get("idf1_tracker_left"), figs.get("idf1_tracker_right")
    fps = [v for k, v in figs.items() if k.startswith("fps_") and isinstance(v, int | float)]
    out = dict(figs)
    out["idf1_left"], out["idf1_right"] = left, right
    out["idf1_mean"] = round((left + right) / 2, 4) if left is not None and right is not None else None
    out["fps"] = round(sum(fps) / len(fps), 2) if fps else None
    return {k: out.get(k) for k in KEPT}


def best(results: dict[str, dict], key: str) -> str | None:
    """The tracker with the highest ``key`` (first in the dict's order on a tie); None if no tracker has it."""
    scored = [(r[key], name) for name, r in results.items() if isinstance(r.get(key), int | float)]
    if not scored:
        return None
    top = max(s for s, _ in scored)
    return next(name for s, name in scored if s == top)


def _pct(v: float | int | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _num(v: float | int | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_table(results: dict[str, dict], variants: list[str], default: str) -> None:
    """One row per tracker and variant (one per tracker when no split-view run was made)."""
    head = (
        f"{'tracker':<13}{'variant':<8}{'IDF1 left':>10}{'right':>7}{'mean':>7}{'oracle':>8}{'joint':>7}"
        f"{'no link':>9}{'merges':>8}{'linked':>8}{'cam fps':>9}{'trk ms/fr':>11}"
    )
    print("figures in percent; per-camera IDF1 with tracker ids; oracle = joint IDF1 with perfect linking;")
    print("cam fps = camera stage in the run (shared CPU); trk ms/fr = tracker update alone (plain clips)")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        shown = name + (" *" if name == default else "")
        if "error" in r:
            print(f"{shown:<13}{'':<8}cannot run: {r['error']}")
            continue
        for v in variants or ["-"]:
            p = "" if v in ("plain", "-") else f"{v}_"
            if f"{p}error" in r:
                print(f"{shown:<13}{v:<8}failed: {r[p + 'error']}")
                continue
            g = {k: r.get(p + k) for k in KEPT}
            linked = "-" if g["people_linked"] is None else f"{g['people_linked']}/{g['people_multi_camera']}"
            print(
                f"{shown:<13}{v:<8}{_pct(g['idf1_left']):>10}{_pct(g['idf1_right']):>7}{_pct(g['idf1_mean']):>7}"
                f"{_pct(g['oracle_idf1']):>8}{_pct(g['joint_idf1']):>7}{_pct(g['no_linking_idf1']):>9}"
                f"{_num(g['merges'], 'd'):>8}{linked:>8}{_num(g['fps'], '.1f'):>9}"
                f"{_num(r.get('tracker_ms_per_frame'), '.1f'):>11}"
            )
    print(f"* current default (pipeline/config: tracker.name = {default!r})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=["plain", "unlike", "both"], default="plain")
    ap.add_argument("--trackers", default=",".join(TRACKERS), help="comma-separated names (default: all)")
    ap.add_argument(
        "--parts",
        default="splitview,speed",
        help="comma-separated: splitview (pipeline runs and scores), speed (tracker-only timing)",
    )
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "reid-splitview")
    args = ap.parse_args(argv)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or parts - {"splitview", "speed"}:
        print(f"error: --parts: expected splitview and/or speed, got {args.parts!r}", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.trackers.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown or not names:
        print(f"error: unknown tracker(s) {unknown}; valid names: {', '.join(TRACKERS)}", file=sys.stderr)
        return 2
    for need in (VTEST, SPLIT / "gt_left.txt", SPLIT / "gt_right.txt", DETECTOR):
        if not need.exists():
            print(f"error: not found: {need} (../shared next to this checkout)", file=sys.stderr)
            return 2
    variants = ["plain", "unlike"] if args.variant == "both" else [args.variant]
    default = TrackerConfig().name

    results: dict[str, dict] = {name: {} for name in names}  # in the order asked for
    runnable = []
    for name in names:
        reason = cannot_run(name)
        if reason is None:
            runnable.append(name)
        else:
            results[name] = {"error": reason}
            print(f"[{name}] cannot run here: {reason}", file=sys.stderr)
    print(f"ReID weights for appearance trackers: {DEFAULT_REID_WEIGHTS}", file=sys.stderr)

    jobs = [(name, v) for name in runnable for v in variants] if "splitview" in parts else []
    t0 = time.perf_counter()
    for i, (name, v) in enumerate(jobs, 1):
        eta = ""
        if i > 1:
            eta = f", about {(time.perf_counter() - t0) / (i - 1) * (len(jobs) - i + 1) / 60:.0f} min left"
        print(f"=== [{i}/{len(jobs)}] {name} / {v}{eta}", file=sys.stderr, flush=True)
        p = "" if v == "plain" else f"{v}_"
        r = results[name]
        try:
            figs = condense(
                run_variant(
                    v,
                    args.work,
                    overrides=[f"tracker.name={name}"],
                    run_dir=args.work / "trackers" / name / v,
                )
            )
        except PipelineRunError as exc:
            last = [ln for ln in exc.stderr_tail.splitlines() if ln.strip()]
            r[f"{p}error"] = f"{exc}: {last[-1] if last else 'no stderr'}"
            print(f"=== {name} / {v} failed: {r[p + 'error']}", file=sys.stderr, flush=True)
            continue
        r.update({p + k: x for k, x in figs.items()})
        print(
            f"=== {name} / {v}: IDF1 left {_pct(figs['idf1_left'])} right {_pct(figs['idf1_right'])}, "
            f"oracle {_pct(figs['oracle_idf1'])}, joint {_pct(figs['joint_idf1'])} ({figs['wall_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    if "speed" in parts and runnable:
        print("=== tracker-only timing on the plain clips", file=sys.stderr, flush=True)
        for name, figs in tracker_speed(runnable, args.work).items():
            results[name].update(figs)
            print(f"=== {name}: {figs}", file=sys.stderr, flush=True)

    variants = variants if jobs else []
    print_table(results, variants, default)
    out: dict[str, object] = dict(results)
    for v in variants:
        p = "" if v == "plain" else f"{v}_"
        of_variant = {n: {k: r.get(p + k) for k in KEPT} for n, r in results.items()}
        for key in RANKED:
            out[f"{p}best_by_{key}"] = best(of_variant, key)
    out["current_default"] = default
    out["variants"] = variants
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
