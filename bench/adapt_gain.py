"""Does adapting to your cameras without labels help on footage it did not adapt on? Adapt yesterday, run today.

    python bench/adapt_gain.py [--checkpoint IN.pt] [--input db|run] [--work DIR]

The realistic use of ``python -m models.adapt``: adapt the head on one stretch of your own cameras' footage,
then run on another stretch of the same cameras. Here the cameras are the PETS09 split view
(``../shared/data/pets09-splitview-dev/README.md``: ``left`` = columns [0, 340) and ``right`` = columns
[428, 768) of ``../shared/data/vtest/vtest.avi``), with the right camera made ``unlike`` by
:func:`bench.splitview.unlike_camera` (lower resolution, gamma, warm cast, JPEG 20).

1. **Adaptation footage**: vtest.avi frames **401-795** (the part of the sequence outside the labelled dev
   frames 1-400; no labels exist for it and none are read), cut into the two cameras, right one unlike
   (``WORK/adapt/clips``).
2. The whole pipeline on them with the checkpoint to adapt (``--set reid.checkpoint=IN``): SQLite store
   and ``--out`` folder in ``WORK/adapt/run`` (reused when it was made from the same checkpoint file).
3. ``models.adapt`` on that run: from the store's crop pictures (``--input db``, the default: what a
   finished run keeps) or re-cut from the clips (``--input run``), default recipe (``AdaptConfig``); the new
   head is ``WORK/adapted.pt``.
4. The input head and the adapted head evaluated on what the adaptation never saw, with the repository's
   own evaluation:

   - split view dev GT tracklets, frames 1-400, looks ``same`` and ``unlike`` (``models.splitview``; its
     ``unlike`` look is another transform than the one of the adaptation footage), every tracklet cut to 6
     and to 2 frames (``models.evaluate.evaluate_on``): rank-1 and mAP;
   - PKU-Reid validation ids (the ``val_ids`` of ``IN.json`` next to the checkpoint, or ``--ids``), 6 and 2
     frames;
   - the whole pipeline on the split view frames 1-400, plain and unlike (``bench/splitview.py``'s
     ``run_variant`` with ``reid.checkpoint`` set; the matcher threshold is the checkpoint's, which the
     adapted head copies): joint multi-camera IDF1 and friends.

   Frames 1-400 show the **same people** as 401-795 (the same site minutes apart): the realistic case, and
   the reason the dev README keeps labels of 401-795 out. No label of frames 1-400 is read by steps 1-3.

Last line: one JSON object: ``default_*`` (the input head) and ``adapted_*`` figures, e.g.
``default_unlike6_map``, ``adapted_pku2_rank1``, ``default_joint_idf1``, ``adapted_unlike_joint_idf1``,
and the adaptation's own pair statistics under ``adapt_*``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.replay import run_watched  # noqa: E402
from bench.splitview import (  # noqa: E402
    DETECTOR,
    SPLIT,
    VTEST,
    PipelineRunError,
    build_clips,
    run_variant,
    write_config,
)
from models.checkpoint import DEFAULT_CHECKPOINT  # noqa: E402

ADAPT_FIRST, ADAPT_FRAMES = 401, 395  # vtest.avi frames 401..795: the unlabelled rest of the sequence
PKU = ROOT.parent / "shared" / "data" / "pku-reid"
FRAMES = (6, 2)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def adaptation_run(work: Path, checkpoint: Path) -> Path:
    """Steps 1-2: the pipeline on frames 401-795 (right camera unlike); returns the run folder (``run.db``,
    ``out/``, ``cams.yaml``). Reused when ``checkpoint.sha256`` there names the same checkpoint file."""
    clips = build_clips("unlike", work / "clips", first=ADAPT_FIRST, frames=ADAPT_FRAMES)
    run = work / "run"
    marker = run / "checkpoint.sha256"
    digest = _sha256(checkpoint)
    if marker.is_file() and marker.read_text() == digest and (run / "out" / "summary.json").is_file():
        print(f"[adapt] reusing the run in {run}", file=sys.stderr)
        return run
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    write_config(clips, run / "cams.yaml")
    cmd = [sys.executable, str(ROOT / "run_pipeline.py"), "--cameras", str(run / "cams.yaml")]
    cmd += ["--db", f"sqlite:///{run / 'run.db'}", "--out", str(run / "out"), "--quiet"]
    cmd += ["--set", f"reid.checkpoint={checkpoint}"]
    print(f"[adapt] the pipeline on 2 x {ADAPT_FRAMES} frames (401-795) ...", file=sys.stderr, flush=True)
    code, stdout, stderr, _, _ = run_watched(cmd)
    if code != 0:
        raise PipelineRunError(f"run_pipeline.py exited with {code} (adaptation footage)", stderr[-3000:])
    print(stdout.strip(), file=sys.stderr)
    marker.write_text(digest)
    return run


def adapt(run: Path, checkpoint: Path, out: Path, source: str) -> dict:
    """Step 3: ``python -m models.adapt`` on the run (store or footage); returns its summary."""
    if source == "db":
        argv = ["--db", f"sqlite:///{run / 'run.db'}"]
    else:
        argv = ["--run", str(run / "out"), "--cams", str(run / "cams.yaml")]
    argv += ["--checkpoint", str(checkpoint), "--out", str(out)]
    print(f"[adapt] python -m models.adapt {' '.join(argv)}", file=sys.stderr, flush=True)
    # its progress and errors go straight to our stderr; its stdout is the JSON summary
    done = subprocess.run(
        [sys.executable, "-m", "models.adapt", *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m models.adapt exited with {done.returncode} (its error is above)")
    return json.loads(done.stdout)


def reid_figures(checkpoint: Path, pku_ids: list[str]) -> dict[str, float]:
    """Step 4a: rank-1 / mAP on the split view (both looks) and PKU val, 6 and 2 frames per tracklet."""
    from models.checkpoint import load_drsta
    from models.evaluate import evaluate_on, load_records

    model = load_drsta(checkpoint)
    data = {
        "same": load_records("splitview", SPLIT, look="same"),
        "unlike": load_records("splitview", SPLIT, look="unlike"),
        "pku": load_records("folder", PKU, ids=pku_ids),
    }
    out = {}
    for name, (query, gallery) in data.items():
        for n in FRAMES:
            m = evaluate_on(model, query, gallery, frames=n)
            out[f"{name}{n}_rank1"] = round(float(m.rank1), 4)
            out[f"{name}{n}_map"] = round(float(m.mAP), 4)
            print(f"[{checkpoint.name}] {name} @{n}: rank-1 {m.rank1:.3f} mAP {m.mAP:.3f}", file=sys.stderr)
    return out


E2E_KEYS = ("joint_idf1", "joint_idp", "joint_idr", "merges", "people_linked", "identities")


def e2e_figures(checkpoint: Path, work: Path, name: str) -> dict[str, float | int | None]:
    """Step 4b: the whole pipeline on split view frames 1-400, plain and unlike, with ``checkpoint``."""
    out: dict[str, float | int | None] = {}
    for variant in ("plain", "unlike"):
        figs = run_variant(
            variant, work, overrides=[f"reid.checkpoint={checkpoint}"], run_dir=work / f"{name}_{variant}"
        )
        prefix = "" if variant == "plain" else "unlike_"
        out.update({prefix + k: figs[k] for k in E2E_KEYS})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="the head to adapt")
    ap.add_argument("--input", choices=["db", "run"], default="db", help="models.adapt --db or --run")
    ap.add_argument(
        "--ids", type=Path, help="PKU val ids (JSON with val_ids; default: the checkpoint's .json)"
    )
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "reid-adapt-gain")
    args = ap.parse_args(argv)
    ids_file = args.ids or args.checkpoint.with_suffix(".json")
    if not args.checkpoint.is_file():
        print(f"error: --checkpoint {args.checkpoint}: not found", file=sys.stderr)
        return 2
    if not ids_file.is_file():
        print(
            f"error: PKU val ids: {ids_file} not found (give --ids FILE.json with val_ids)", file=sys.stderr
        )
        return 2
    for need in (VTEST, SPLIT / "gt_left.txt", SPLIT / "gt_right.txt", DETECTOR, PKU):
        if not need.exists():
            print(f"error: not found: {need} (../shared next to this checkout)", file=sys.stderr)
            return 2
    from models.evaluate import parse_ids
    from models.runtime import configure_torch

    configure_torch()  # the thread settings models.evaluate uses

    try:
        pku_ids = parse_ids(str(ids_file))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    checkpoint = args.checkpoint.resolve()
    work = args.work.resolve()
    adapted = work / "adapted.pt"
    try:
        run = adaptation_run(work / "adapt", checkpoint)
        summary = adapt(run, checkpoint, adapted, args.input)
        result: dict[str, float | int | str | None] = {
            "checkpoint": checkpoint.name,
            "adapt_input": args.input,
            "adapt_tracks": summary["tracks"],
            "adapt_crops": summary["crops"],
            "adapt_positive_pairs": summary["positive_pairs"],
            "adapt_negative_pairs": summary["negative_pairs"],
            "adapt_pos_cos_before": round(summary["mean_cos_before"]["positive"], 4),
            "adapt_pos_cos_after": round(summary["mean_cos_after"]["positive"], 4),
            "adapt_neg_cos_before": round(summary["mean_cos_before"]["negative"], 4),
            "adapt_neg_cos_after": round(summary["mean_cos_after"]["negative"], 4),
        }
        for name, ckpt in (("default", checkpoint), ("adapted", adapted)):
            result.update({f"{name}_{k}": v for k, v in reid_figures(ckpt, pku_ids).items()})
        for name, ckpt in (("default", checkpoint), ("adapted", adapted)):
            result.update({f"{name}_{k}": v for k, v in e2e_figures(ckpt, work / "eval", name).items()})
    except PipelineRunError as exc:
        print(exc.stderr_tail, file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
