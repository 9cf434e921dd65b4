"""Evaluate tracking results against MOTChallenge ground truth: IDF1/MOTA (motmetrics), HOTA (trackeval).

Usage::

    python -m pipeline.tools.evaluate_mot --gt-root DIR --pred-root DIR [--json OUT]

Layout: ground truth at ``<gt-root>/<SEQ>/gt/gt.txt`` (every sub-folder that has one is a sequence),
predictions at ``<pred-root>/<SEQ>.txt`` in MOT format (``frame,id,x,y,w,h,conf,...``, 1-based frames, xywh).

Protocol implemented (the MOT16/17 one, as in the official devkit):

- **Evaluated frames** are the frames that have at least one ground-truth row (any class). ``seqinfo.ini``
  is not read: a partial ground truth (such as the first few frames of mot17-mini) is evaluated on its own
  frames, and predictions on other frames are ignored (counted as ``ignored_pred_rows``).
- **Ground truth** counted: class 1 (pedestrian) with a non-zero consider flag (column 7). Files with fewer
  than 8 columns are taken as all pedestrians (and all considered if they have fewer than 7).
- **Distractors**: per frame, predictions are matched one-to-one to *all* ground-truth boxes of the frame
  (Hungarian on 1 - IoU, pairs need IoU >= 0.5); predictions matched to a box of class 2 (person on vehicle),
  7 (static person), 8 (distractor) or 12 (reflection) are removed before scoring. Predictions over other
  non-pedestrian classes (cars, occluders...) or non-considered pedestrians stay and count as false positives.
- **Scoring**: the filtering above gives, per evaluated frame, the counted ground truth and the remaining
  predictions (:class:`ScoredFrame`); all three metrics score exactly these boxes.

  - IDF1, MOTA and the counts: per frame a ``motmetrics.MOTAccumulator`` gets the 1 - IoU distances with
    IoU < 0.5 as "do not pair"; motmetrics computes them per sequence and combined over all sequences
    (``OVERALL``, from summed counts). (motmetrics' own ``iou_matrix`` uses ``np.asfarray``, removed in
    NumPy 2, so the IoU matrix is computed here by :func:`box_iou`.)
  - HOTA, DetA, AssA: ``trackeval.metrics.HOTA`` (no HOTA math of ours) gets the per-sequence data dict that
    trackeval's MOTChallenge loader would build: ids relabelled to ``0..n-1`` per sequence, unthresholded
    IoU as similarity, one timestep per evaluated frame. Each value is trackeval's summary figure, the mean
    over its 19 thresholds alpha = 0.05 .. 0.95; ``OVERALL`` is trackeval's ``combine_sequences``.

Output: a table on stdout; ``--json OUT`` writes ``{"sequences": {SEQ: {...}}, "overall": {...}, ...}`` with
metrics as fractions in [0, 1] (``null`` where undefined: IDF1 and MOTA without counted ground truth; HOTA,
DetA and AssA without counted ground truth and without predictions). A missing gt root, a gt root without
sequences, a missing or malformed prediction file: one line on stderr naming it, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import motmetrics as mm
import numpy as np
import trackeval

from pipeline.camera.mot_io import read_mot

__all__ = [
    "EvaluationInputError",
    "ScoredFrame",
    "box_iou",
    "iou_distance",
    "distractor_keep_mask",
    "prepare_sequence",
    "accumulate_sequence",
    "trackeval_sequence_data",
    "evaluate",
    "format_table",
    "main",
]

PEDESTRIAN = 1
DISTRACTOR_CLASSES = (2, 7, 8, 12)
IOU_THRESHOLD = 0.5
_HOTA_FIELDS = ("HOTA", "DetA", "AssA")

_METRICS = ["idf1", "mota", "idp", "idr", "num_switches", "num_false_positives", "num_misses", "num_objects"]
_NAMES = {
    "idf1": "IDF1",
    "mota": "MOTA",
    "idp": "IDP",
    "idr": "IDR",
    "num_switches": "IDSW",
    "num_false_positives": "FP",
    "num_misses": "FN",
    "num_objects": "GT",
}


class EvaluationInputError(ValueError):
    """An input path is missing or a file cannot be parsed; the message names it."""


@dataclass(frozen=True)
class ScoredFrame:
    """One evaluated frame after class/consider filtering and distractor removal: what every metric scores.

    ``gt_ids`` (G,) int and ``gt_xywh`` (G, 4) are the counted ground truth, ``pred_ids`` (P,) int (unique)
    and ``pred_xywh`` (P, 4) the remaining predictions; boxes are ``x, y, w, h`` in pixels.
    """

    frame: int
    gt_ids: np.ndarray
    gt_xywh: np.ndarray
    pred_ids: np.ndarray
    pred_xywh: np.ndarray

    def __post_init__(self) -> None:
        for ids, boxes, what in ((self.gt_ids, self.gt_xywh, "gt"), (self.pred_ids, self.pred_xywh, "pred")):
            if ids.ndim != 1 or boxes.shape != (len(ids), 4):
                raise ValueError(
                    f"frame {self.frame}: expected {what}_ids (K,) and {what}_xywh (K, 4), "
                    f"got {ids.shape} and {boxes.shape}"
                )


def box_iou(a_xywh: np.ndarray, b_xywh: np.ndarray) -> np.ndarray:
    """(M, N) IoU in [0, 1] between xywh boxes ``a`` (M, 4) and ``b`` (N, 4). Boxes of zero or negative area
    have IoU 0 with everything (as in trackeval's ``_calculate_box_ious``)."""
    a = np.asarray(a_xywh, np.float64).reshape(-1, 4)
    b = np.asarray(b_xywh, np.float64).reshape(-1, 4)
    ax1, ay1, ax2, ay2 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]  # (M, 1) each
    bx1, by1, bx2, by2 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]  # (N,) each
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0.0, None)  # (M, N)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0.0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def iou_distance(a_xywh: np.ndarray, b_xywh: np.ndarray, min_iou: float = IOU_THRESHOLD) -> np.ndarray:
    """(M, N) distances ``1 - IoU`` between xywh boxes ``a`` (M, 4) and ``b`` (N, 4); NaN (motmetrics' "do not
    pair") where IoU < ``min_iou``. Zero-area boxes have IoU 0 with everything."""
    iou = box_iou(a_xywh, b_xywh)
    return np.where(iou >= min_iou, 1.0 - iou, np.nan)


def distractor_keep_mask(gt_classes: np.ndarray, gt_xywh: np.ndarray, pred_xywh: np.ndarray) -> np.ndarray:
    """(N,) bool: which of one frame's N predictions survive distractor removal (see the module docstring).

    ``gt_classes`` (M,) and ``gt_xywh`` (M, 4) are *all* ground-truth rows of the frame, any class.
    """
    keep = np.ones(len(pred_xywh), bool)
    if len(gt_xywh) == 0 or len(pred_xywh) == 0:
        return keep
    dist = iou_distance(gt_xywh, pred_xywh)
    rows, cols = mm.lap.linear_sum_assignment(dist)
    for r, c in zip(rows, cols, strict=True):
        if np.isfinite(dist[r, c]) and int(gt_classes[r]) in DISTRACTOR_CLASSES:
            keep[c] = False
    return keep


def _by_frame(rows: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order]
    frames, starts = np.unique(rows[:, 0].astype(np.int64), return_index=True)
    return {int(f): part for f, part in zip(frames, np.split(rows, starts[1:]), strict=True)}


def prepare_sequence(gt: np.ndarray, pred: np.ndarray) -> tuple[list[ScoredFrame], dict[str, int]]:
    """Apply the protocol's filtering to one sequence: one :class:`ScoredFrame` per evaluated frame
    (ascending) plus ``{"frames", "ignored_pred_rows", "removed_distractor_rows"}``.

    ``gt`` (G, >= 6) is a ground-truth file as :func:`pipeline.camera.mot_io.read_mot` returns it, ``pred`` (P, >= 6)
    a prediction file. Raises ``ValueError`` if a prediction id occurs twice in one frame.
    """
    gt_frames = _by_frame(gt) if len(gt) else {}
    pred_frames = _by_frame(pred) if len(pred) else {}
    frames: list[ScoredFrame] = []
    removed = 0
    for f in sorted(gt_frames):
        g = gt_frames[f]
        p = pred_frames.get(f, np.zeros((0, max(pred.shape[1], 6))))
        ids = p[:, 1].astype(np.int64)
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise ValueError(f"frame {f}: a prediction id occurs more than once")
        classes = g[:, 7] if g.shape[1] >= 8 else np.full(len(g), PEDESTRIAN)
        consider = g[:, 6] != 0 if g.shape[1] >= 7 else np.ones(len(g), bool)
        keep = distractor_keep_mask(classes, g[:, 2:6], p[:, 2:6])
        removed += int((~keep).sum())
        p = p[keep]
        c = g[(classes == PEDESTRIAN) & consider]
        frames.append(ScoredFrame(f, c[:, 1].astype(np.int64), c[:, 2:6], ids[keep], p[:, 2:6]))
    ignored = sum(len(rows) for f, rows in pred_frames.items() if f not in gt_frames)
    extra = {"frames": len(gt_frames), "ignored_pred_rows": ignored, "removed_distractor_rows": removed}
    return frames, extra


def accumulate_sequence(frames: Sequence[ScoredFrame]) -> mm.MOTAccumulator:
    """motmetrics event accumulator over one sequence's frames (pairs need IoU >= ``IOU_THRESHOLD``)."""
    acc = mm.MOTAccumulator(auto_id=False)
    for fr in frames:
        acc.update(fr.gt_ids, fr.pred_ids, iou_distance(fr.gt_xywh, fr.pred_xywh), frameid=fr.frame)
    return acc


def _dense_ids(ids_per_frame: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    # trackeval indexes its per-id count arrays by id, so ids must be 0..n-1 (its MOTChallenge loader
    # relabels the same way, over the ids left after preprocessing).
    unique = np.unique(np.concatenate([np.zeros(0, np.int64), *ids_per_frame]))
    return [np.searchsorted(unique, ids) for ids in ids_per_frame], len(unique)


def trackeval_sequence_data(frames: Sequence[ScoredFrame]) -> dict[str, Any]:
    """The per-sequence dict that ``trackeval.metrics.HOTA.eval_sequence`` takes, one timestep per frame.

    Ids are relabelled to ``0..n-1`` (order kept); ``similarity_scores[t]`` is the (G_t, P_t) IoU matrix
    without threshold (HOTA applies its own alphas).
    """
    gt_ids, num_gt_ids = _dense_ids([fr.gt_ids for fr in frames])
    tracker_ids, num_tracker_ids = _dense_ids([fr.pred_ids for fr in frames])
    return {
        "gt_ids": gt_ids,
        "tracker_ids": tracker_ids,
        "similarity_scores": [box_iou(fr.gt_xywh, fr.pred_xywh) for fr in frames],
        "num_gt_ids": num_gt_ids,
        "num_tracker_ids": num_tracker_ids,
        "num_gt_dets": sum(len(fr.gt_ids) for fr in frames),
        "num_tracker_dets": sum(len(fr.pred_ids) for fr in frames),
        "num_timesteps": len(frames),
    }


def _hota_summary(res: dict[str, Any]) -> dict[str, float | None]:
    """trackeval's summary figures (mean over the alphas) from a HOTA result; ``None`` when there was nothing
    to score (no counted ground truth and no predictions: TP + FN + FP = 0)."""
    if float(res["HOTA_TP"][0] + res["HOTA_FN"][0] + res["HOTA_FP"][0]) == 0.0:
        return dict.fromkeys(_HOTA_FIELDS)
    return {k: _finite_or_none(np.mean(res[k])) for k in _HOTA_FIELDS}


def _finite_or_none(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _load(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise EvaluationInputError(f"{what} not found: {path}")
    try:
        return read_mot(path)
    except ValueError as e:
        raise EvaluationInputError(f"{what} unreadable: {e}") from None


def evaluate(gt_root: str | os.PathLike[str], pred_root: str | os.PathLike[str]) -> dict[str, Any]:
    """Evaluate every sequence under ``gt_root`` against ``pred_root/<SEQ>.txt``; return the JSON-ready dict.

    Raises :class:`EvaluationInputError` for a missing gt root, no sequences, a missing pred root or file,
    or a malformed file.
    """
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    if not gt_root.is_dir():
        raise EvaluationInputError(f"gt root not found: {gt_root}")
    seqs = sorted(d.name for d in gt_root.iterdir() if (d / "gt" / "gt.txt").is_file())
    if not seqs:
        raise EvaluationInputError(f"no sequences with gt/gt.txt under gt root: {gt_root}")
    if not pred_root.is_dir():
        raise EvaluationInputError(f"pred root not found: {pred_root}")
    accs, extras, hota_res = [], {}, {}
    hota = trackeval.metrics.HOTA()
    for seq in seqs:
        gt = _load(gt_root / seq / "gt" / "gt.txt", "gt file")
        pred_path = pred_root / f"{seq}.txt"
        pred = _load(pred_path, "prediction file")
        try:
            frames, extra = prepare_sequence(gt, pred)
        except ValueError as e:
            raise EvaluationInputError(f"prediction file invalid: {pred_path}: {e}") from None
        accs.append(accumulate_sequence(frames))
        hota_res[seq] = hota.eval_sequence(trackeval_sequence_data(frames))
        extras[seq] = extra
    summary = mm.metrics.create().compute_many(accs, metrics=_METRICS, names=seqs, generate_overall=True)
    hota_res["OVERALL"] = hota.combine_sequences(hota_res)

    def row(name: str, extra: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = _hota_summary(hota_res[name])
        for key, label in _NAMES.items():
            v = summary.loc[name, key]
            out[label] = int(v) if key.startswith("num_") else _finite_or_none(v)
        out.update(extra)
        return out

    sequences = {seq: row(seq, extras[seq]) for seq in seqs}
    overall = row("OVERALL", {k: sum(e[k] for e in extras.values()) for k in next(iter(extras.values()))})
    return {
        "sequences": sequences,
        "overall": overall,
        "protocol": {
            "iou_threshold": IOU_THRESHOLD,
            "counted_gt": "class 1 with consider_flag != 0, frames present in gt",
            "distractor_classes": list(DISTRACTOR_CLASSES),
            "hota": f"trackeval {trackeval.__version__} HOTA, mean over alpha 0.05..0.95, same boxes as MOTA",
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """Fixed-width table: one row per sequence and the OVERALL row; metrics in percent."""
    cols = ["HOTA", "IDF1", "MOTA", "IDSW", "FP", "FN", "GT", "frames"]
    names = [*result["sequences"], "OVERALL"]
    width = max(len(n) for n in names) + 2

    def cell(v: Any) -> str:
        if v is None:
            return f"{'n/a':>8}"
        return f"{v:>8d}" if isinstance(v, int) else f"{100.0 * v:>8.1f}"

    lines = ["sequence".ljust(width) + "".join(f"{c:>8}" for c in cols)]
    for name in names:
        r = result["overall"] if name == "OVERALL" else result["sequences"][name]
        lines.append(name.ljust(width) + "".join(cell(r[c]) for c in cols))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.evaluate_mot", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--gt-root", required=True, type=Path, help="folder of <SEQ>/gt/gt.txt")
    parser.add_argument("--pred-root", required=True, type=Path, help="folder of <SEQ>.txt result files")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.gt_root, args.pred_root)
    except EvaluationInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
