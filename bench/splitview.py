"""Cross-camera identity on real footage: the PETS09 split view, run through the whole pipeline and scored.

    python bench/splitview.py [--variant plain|unlike|both] [--work DIR] [--set KEY=VALUE ...]

Data: ``../shared/data/pets09-splitview-dev`` (its README): two virtual cameras cut from frames 1-400 of
``../shared/data/vtest/vtest.avi``, ``left`` = columns [0, 340) and ``right`` = columns [428, 768), an 88-px
blind corridor between them, person-level ground truth ``gt_left.txt`` / ``gt_right.txt``. Evaluation only:
nothing here is trained, fitted or tuned on those labels; every pipeline setting is the config schema's
default except the detector (the team's OpenVINO INT8 YOLO11n, which needs ``imgsz`` 640) and what
``--set KEY=VALUE`` overrides (passed to ``run_pipeline.py`` as they are, e.g. ``--set tracker.name=ocsort``;
repeatable).

Steps, per variant:

1. Build the two clips with OpenCV into ``--work`` (default ``$TMPDIR/reid-splitview``; reused when already
   there): frames 1..400, the columns above, 10 fps, FFV1 in AVI (lossless, so the plain variant's pixels
   are vtest's decoded pixels).
2. Write ``cams.yaml``: both cameras with the same ``start_time`` (they share vtest's clock) and one
   topology link ``left``-``right`` with a transit of 0-30 s.
3. Run ``run_pipeline.py --cameras cams.yaml --db sqlite:///run.db --out out/ --quiet`` as a child process
   (embedded queue), then score it with :func:`pipeline.tools.evaluate_mtmc.evaluate_run` on frames 1-400.
   ``WORK/<variant>/`` keeps the run, so ``python -m pipeline.tools.evaluate_mtmc`` can be run on it again.
   ``fps_<camera>`` is the camera stage's frames per second as the run reports it (``out/summary.json``:
   decoding, detection, tracking and cropping of that camera, both cameras in one process on a shared CPU).

Variants:

- ``plain``: both cameras as cut.
- ``unlike``: the right camera made to look like another camera model. Each of its frames (BGR uint8
  340x576), in this order: (a) resolution: resized to 60 % (204x346, ``INTER_AREA``) and back to 340x576
  (``INTER_LINEAR``): the detail of a lower-resolution sensor in the same frame geometry, so the same
  ground truth applies; (b) gamma 1.4: ``v -> 255 * (v / 255) ** 1.4`` (darker mid-tones); (c) warm
  colour cast: red x 1.12, green x 1.00, blue x 0.85, rounded and clipped to 0..255; (d) compression: JPEG
  encode/decode at quality 20. The left camera is unchanged. Re-ID must then match people across two
  cameras that render them differently, which is where it earns its keep.

Last line: one JSON object; the plain variant's figures at the top level (``joint_idf1``, ``joint_idp``,
``joint_idr``, ``joint_hota``, ``no_linking_idf1``, ``oracle_idf1``, ``gain_taken``, ``merges``,
``people_linked``, ``oracle_people_linked``, ``people_multi_camera``, per-camera IDF1...), the unlike
variant's under the same names prefixed ``unlike_``.

From Python: :func:`run_variant` (``bench/trackers.py`` runs it once per tracker); a failed pipeline run
raises :class:`PipelineRunError` carrying the end of its stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay import run_watched  # noqa: E402
from pipeline.tools.evaluate_mtmc import MtmcResult, evaluate_run  # noqa: E402

SHARED = ROOT.parent / "shared"
VTEST = SHARED / "data" / "vtest" / "vtest.avi"
SPLIT = SHARED / "data" / "pets09-splitview-dev"
DETECTOR = SHARED / "assets" / "detectors" / "yolo11n_int8_openvino_model"
FRAMES = 400
FPS = 10
CAMERAS = {"left": (0, 340), "right": (428, 768)}  # columns [x0, x1) of vtest.avi
START_TIME = "2024-05-14T09:00:00Z"
TRANSIT_S = (0, 30)

DOWNSCALE = 0.6
GAMMA = 1.4
CAST_BGR = (0.85, 1.00, 1.12)
JPEG_QUALITY = 20
_GAMMA_LUT = np.round(255.0 * (np.arange(256) / 255.0) ** GAMMA).astype(np.uint8)


def unlike_camera(frame: np.ndarray) -> np.ndarray:
    """The ``unlike`` transform of one (H, W, 3) uint8 BGR frame (module docstring, steps a-d); same shape."""
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (round(w * DOWNSCALE), round(h * DOWNSCALE)), interpolation=cv2.INTER_AREA)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.LUT(out, _GAMMA_LUT)
    out = np.clip(np.round(out.astype(np.float32) * np.float32(CAST_BGR)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


VARIANTS: dict[str, dict[str, Callable[[np.ndarray], np.ndarray] | None]] = {
    "plain": {"left": None, "right": None},
    "unlike": {"left": None, "right": unlike_camera},
}


def build_clips(variant: str, folder: Path, *, first: int = 1, frames: int = FRAMES) -> dict[str, Path]:
    """Write ``folder/<camera>.avi`` for ``variant`` (frames ``first`` .. ``first + frames - 1`` of vtest.avi,
    1-based; default 1..400, the labelled dev frames); reuse finished clips."""
    paths = {cam: folder / f"{cam}.avi" for cam in CAMERAS}
    if all(p.is_file() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(VTEST))
    for i in range(first - 1):  # decode and drop: exact where seeking an AVI may not be
        if not cap.read()[0]:
            cap.release()
            raise RuntimeError(f"{VTEST}: frame {i + 1} unreadable (expected at least {first} frames)")
    parts = {cam: p.with_suffix(".part.avi") for cam, p in paths.items()}
    writers = {
        cam: cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"FFV1"), FPS, (x1 - x0, 576))
        for cam, p in parts.items()
        for x0, x1 in [CAMERAS[cam]]
    }
    try:
        for i in tqdm(range(first - 1, first - 1 + frames), desc=f"clips ({variant})", unit="frame"):
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(
                    f"{VTEST}: frame {i + 1} unreadable (expected {first + frames - 1} frames)"
                )
            for cam, (x0, x1) in CAMERAS.items():
                view = np.ascontiguousarray(frame[:, x0:x1])
                transform = VARIANTS[variant][cam]
                writers[cam].write(view if transform is None else transform(view))
    finally:
        cap.release()
        for w in writers.values():
            w.release()
    for cam, p in parts.items():
        p.replace(paths[cam])
    return paths


def write_config(clips: dict[str, Path], path: Path) -> None:
    cfg = {
        "cameras": [{"id": cam, "source": str(p), "start_time": START_TIME} for cam, p in clips.items()],
        "detector": {"weights": str(DETECTOR), "imgsz": 640},
        "topology": {
            "links": [
                {"cameras": list(CAMERAS), "min_transit_s": TRANSIT_S[0], "max_transit_s": TRANSIT_S[1]}
            ]
        },
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def figures(result: MtmcResult) -> dict[str, float | int | None]:
    """The flat figures of one variant (fractions; None = undefined)."""
    out: dict[str, float | int | None] = {
        "joint_idf1": result.joint.idf1,
        "joint_idp": result.joint.idp,
        "joint_idr": result.joint.idr,
        "joint_hota": result.joint.hota,
        "no_linking_idf1": result.no_linking.idf1,
        "no_linking_hota": result.no_linking.hota,
        "oracle_idf1": result.oracle.idf1,
        "oracle_hota": result.oracle.hota,
        "gain_taken": result.gain_taken,
        "merges": result.joint.merges,
        "people_linked": result.joint.people_linked,
        "oracle_people_linked": result.oracle.people_linked,
        "people_multi_camera": result.people_multi_camera,
        "identities": result.joint.identities,
        "unlinked_tracks": result.unlinked_tracks,
    }
    for c in result.cameras:
        out[f"idf1_tracker_{c.camera}"] = c.idf1_tracker
        out[f"idf1_global_{c.camera}"] = c.idf1_global
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


class PipelineRunError(RuntimeError):
    """``run_pipeline.py`` exited with a non-zero code; ``stderr_tail`` is the end of what it printed."""

    def __init__(self, message: str, stderr_tail: str):
        super().__init__(message)
        self.stderr_tail = stderr_tail


def run_variant(
    variant: str, work: Path, *, overrides: list[str] | tuple[str, ...] = (), run_dir: Path | None = None
) -> dict[str, float | int | None]:
    """Build, run and score one variant; the run stays in ``run_dir`` (default ``work/<variant>/``).

    ``overrides`` are ``KEY=VALUE`` strings passed to ``run_pipeline.py`` as ``--set`` options. The clips are
    built in (and reused from) ``work/clips/<variant>/``. Raises :class:`PipelineRunError` when the pipeline
    run fails.
    """
    clips = build_clips(variant, work / "clips" / variant)
    run = run_dir if run_dir is not None else work / variant
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    write_config(clips, run / "cams.yaml")
    db = f"sqlite:///{run / 'run.db'}"
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--cameras", str(run / "cams.yaml")]
    cmd += ["--db", db, "--out", str(run / "out"), "--quiet"]
    for kv in overrides:
        cmd += ["--set", kv]
    shown = "".join(f" --set {kv}" for kv in overrides)
    print(f"[{variant}] running the pipeline on 2 x {FRAMES} frames{shown} ...", file=sys.stderr, flush=True)
    code, stdout, stderr, wall, peak = run_watched(cmd)
    if code != 0:
        tail = stderr[-3000:]
        raise PipelineRunError(f"run_pipeline.py exited with {code} ({variant}{shown})", tail)
    print(stdout.strip(), file=sys.stderr)
    gt = {cam: SPLIT / f"gt_{cam}.txt" for cam in CAMERAS}
    result = evaluate_run(db, run / "out", gt, frames=(1, FRAMES))
    out = figures(result)
    summary = json.loads((run / "out" / "summary.json").read_text())
    for cam, c in summary["cameras"].items():
        out[f"fps_{cam}"] = c["fps"]
    out["threshold"] = summary["matcher_threshold"]["value"]
    out["camera_centering"] = summary["matcher_threshold"]["camera_centering"]
    out["wall_s"] = round(wall, 1)
    out["peak_rss_mb"] = round(peak / 2**20, 1)
    gt_args = " ".join(f"--gt {cam}={p}" for cam, p in gt.items())
    print(
        f"[{variant}] python -m pipeline.tools.evaluate_mtmc --db {db} --pred-root {run / 'out'} {gt_args} "
        f"--frames 1-{FRAMES}",
        file=sys.stderr,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=["plain", "unlike", "both"], default="both")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "reid-splitview")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to run_pipeline.py (repeatable), e.g. tracker.name=ocsort",
    )
    args = ap.parse_args(argv)
    for need in (VTEST, SPLIT / "gt_left.txt", SPLIT / "gt_right.txt", DETECTOR):
        if not need.exists():
            print(f"error: not found: {need} (../shared next to this checkout)", file=sys.stderr)
            return 2
    variants = ["plain", "unlike"] if args.variant == "both" else [args.variant]
    result: dict[str, float | int | None] = {}
    for v in variants:
        prefix = "" if v == "plain" else f"{v}_"
        try:
            figs = run_variant(v, args.work, overrides=args.overrides)
        except PipelineRunError as exc:
            print(exc.stderr_tail, file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            return 1
        result.update({prefix + k: x for k, x in figs.items()})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
