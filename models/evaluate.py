"""Evaluate a re-ID model against the honest baseline: CMC (rank-1/5/10/20), mAP and the CMC curve.

    python -m models.evaluate [--checkpoint CKPT] --dataset folder --root DIR [--frames 6 2] [--json OUT] [--plot CMC.png]
    python -m models.evaluate --baseline own --backbone openvino_0277 --dataset folder --root DIR ...

Without ``--baseline`` the checkpoint (default: the project's default checkpoint) is evaluated **and** compared
with the honest baseline: the same backbone's own per-image embedding mean-pooled over the same frames of
each tracklet (``--compare none`` skips it). ``--baseline own`` evaluates only that baseline; ``--baseline
avgpool`` averages the raw feature grid (what DRSTA attends over, not a deployable model: kept to show what
the map alone is worth). ``--frames`` lists the frames-per-tracklet settings: each tracklet is first cut to
that many frames (restricted random sampling, test mode: the first frame of each chunk), then the model
samples its N frames from them (a short tracklet repeats frames), so model and baseline see the same pixels.

Protocol: for the folder layout every tracklet is a query against the tracklets of the other cameras (same
identity + same camera is discarded; other people from the same camera stay in the gallery: the standard
cross-camera rule); ``--ids`` restricts the identities (a comma list, or a JSON file with a ``val_ids`` list,
such as the one written next to the default checkpoint). Other datasets use their official query/gallery.
Prints one line per (model, frames) and, last, one JSON object: the first model (the checkpoint, or the
baseline asked for) at the first ``--frames`` setting as top-level keys (``rank1``, ``mAP``, ...), and every
(model, frames) run under ``"runs"`` with its first 20 CMC values.

``--center camera`` (default ``none``): camera centering (``pipeline.matching.centering``) before ranking,
the same for every model so the comparison stays fair: each model's embeddings of the evaluated tracklets
(query and gallery together) are centred with ``center_by_camera``, each camera's mean shrunk towards the
model's prior. The DRSTA head's prior is the one its checkpoint records (``meta["centering"]``; a checkpoint
without one is an error). A baseline's prior is computed the same way train_head computes the head's: the
mean of the baseline's unit embeddings of the checkpoint's training ids' tracklets (``meta["train_ids"]`` of
``--checkpoint``, default the project's default checkpoint, also with ``--baseline``), read from
``--prior-root`` (default: the PKU folder the checkpoint's ``meta["dataset"]`` names, else
``../shared/data/pku-reid``), as filmed, each tracklet cut to **6 frames** whatever ``--frames`` says
(train_head's prior is taken at the head's N = 6 frames, and the matcher uses one prior for every tracklet
length). Each result line and each JSON run says which centering it used.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.checkpoint import (
    DEFAULT_CHECKPOINT,
    REPO_ROOT,
    CheckpointError,
    checkpoint_centering,
    load_avgpool_baseline,
    load_drsta,
    read_checkpoint,
    resolve_device,
)
from models.datasets import DATASETS, TrackletRecord, get_reader, read_folder
from models.drsta import DRSTA, AvgPoolReID
from models.metrics import ReIDMetrics
from models.runtime import configure_torch
from models.sampling import restricted_random_sample
from models.train import embed_records, rank_records
from pipeline.matching.centering import center_by_camera

LOOK_CACHE = "~/.cache/reid-pipeline"
CENTERINGS = ("none", "camera")
PRIOR_FRAMES = 6  # frames per prior tracklet, whatever --frames says (train_head takes the head's at N = 6)
DEFAULT_PRIOR_ROOT = "../shared/data/pku-reid"


def parse_ids(value: str | None) -> list[str] | None:
    if not value:
        return None
    p = Path(value)
    if p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"--ids: {p} not found")
        data = json.loads(p.read_text())
        ids = data.get("val_ids") if isinstance(data, dict) else data
        if not isinstance(ids, list):
            raise ValueError(f"--ids: {p} holds no 'val_ids' list")
        return [str(i) for i in ids]
    return [s.strip() for s in value.split(",") if s.strip()]


def cut_tracklets(records: list[TrackletRecord], frames: int | None) -> list[TrackletRecord]:
    """Each tracklet cut to ``frames`` frames (test-mode restricted random sampling); None keeps them all.

    A tracklet with fewer frames keeps all of them (no repeats here: the model's own sampling repeats).
    """
    if frames is None:
        return list(records)
    if frames < 1:
        raise ValueError(f"frames: expected >= 1, got {frames}")
    out = []
    for r in records:
        if len(r.paths) <= frames:
            out.append(r)
            continue
        idx = restricted_random_sample(len(r.paths), frames, train=False)
        out.append(replace(r, paths=tuple(r.paths[i] for i in idx)))
    return out


def load_records(
    dataset: str,
    root: str | Path,
    *,
    ids=None,
    split: int = 0,
    look: str = "same",
    piece: int | None = None,
) -> tuple[list[TrackletRecord], list[TrackletRecord]]:
    """(query, gallery) of ``dataset`` under its protocol; the same list object twice when every tracklet is
    queried against all others (the folder layout). ``look`` and ``piece``: splitview only."""
    if dataset == "splitview":  # evaluation-only GT tracklets: not a training dataset, so not in DATASETS
        from models.splitview import read_splitview

        records = list(read_splitview(root, look=look, piece=piece).query)
        return records, records  # one list: every tracklet against the other camera, embedded once
    reader = get_reader(dataset)
    if dataset == "folder":
        data = reader(root, ids=ids)
    elif dataset in ("prid2011", "ilidsvid"):
        data = reader(root, split=split)
    else:
        data = reader(root)
    query, gallery = list(data.query), list(data.gallery)
    if not query or not gallery:
        raise ValueError(f"{root}: dataset {dataset!r} has no query or no gallery tracklets")
    return (query, query) if gallery == query else (query, gallery)


def evaluate_model(
    model,
    dataset: str,
    root: str | Path,
    *,
    ids=None,
    split: int = 0,
    device="cpu",
    frames: int | None = None,
) -> ReIDMetrics:
    """Metrics of ``model`` on ``dataset`` with every tracklet cut to ``frames`` frames (None: all)."""
    query, gallery = load_records(dataset, root, ids=ids, split=split)
    return evaluate_on(model, query, gallery, device=device, frames=frames)


def evaluate_on(
    model,
    query: list[TrackletRecord],
    gallery: list[TrackletRecord],
    *,
    device="cpu",
    frames: int | None,
    prior: np.ndarray | None = None,
) -> ReIDMetrics:
    """Metrics of ``model`` with every tracklet cut to ``frames``; with ``prior``, camera-centred first."""
    same = gallery is query
    q = cut_tracklets(query, frames)
    g = q if same else cut_tracklets(gallery, frames)
    q_emb = embed_records(model, q, device, None).numpy()
    g_emb = q_emb if same else embed_records(model, g, device, None).numpy()  # one list: embedded once
    return rank_embeddings(q_emb, g_emb, q, g, prior=prior)


def rank_embeddings(
    q_emb: np.ndarray,
    g_emb: np.ndarray,
    query: list[TrackletRecord],
    gallery: list[TrackletRecord],
    *,
    prior: np.ndarray | None = None,
) -> ReIDMetrics:
    """Rank ``gallery`` for each of ``query`` by cosine (cross-camera protocol, ``models.metrics``).

    With ``prior``, every embedding is first camera-centred with ``center_by_camera`` over the evaluated set
    (query and gallery together, once when they are the same list), each camera's mean shrunk towards
    ``prior``. ``gallery is query`` (and ``g_emb is q_emb``) means every tracklet against all the others.
    """
    same = gallery is query
    if prior is not None:
        if same:
            q_emb = g_emb = center_by_camera(q_emb, [r.camid for r in query], prior)
        else:
            both = center_by_camera(
                np.concatenate([q_emb, g_emb]), [r.camid for r in [*query, *gallery]], prior
            )
            q_emb, g_emb = both[: len(query)], both[len(query) :]
    return rank_records(q_emb, g_emb, query, gallery)


def prior_root_of(meta: dict, given: str | None) -> Path:
    """``--prior-root``, else the folder ``meta["dataset"]`` names (``"PKU-Reid folder DIR"``, relative to the
    working directory or the repository), else ``../shared/data/pku-reid``; FileNotFoundError if absent."""
    if given:
        root = Path(given)
    else:
        recorded = str(meta.get("dataset", ""))
        named = (
            recorded.removeprefix("PKU-Reid folder ").strip()
            if recorded.startswith("PKU-Reid folder ")
            else ""
        )
        root = Path(named or DEFAULT_PRIOR_ROOT)
        if not root.is_absolute() and not root.is_dir() and (REPO_ROOT / root).is_dir():
            root = REPO_ROOT / root
    if not root.is_dir():
        raise FileNotFoundError(
            f"--prior-root: {root} not found (the PKU folder holding the checkpoint's train_ids)"
        )
    return root


def train_ids_of(meta: dict, path) -> list[str]:
    raw = meta.get("train_ids")
    try:
        ids = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        ids = None
    if not isinstance(ids, list) or not ids:
        raise CheckpointError(f"{path}: meta train_ids: expected a JSON list of identity names, got {raw!r}")
    return [str(i) for i in ids]


def embedding_prior(model, records: list[TrackletRecord], device) -> np.ndarray:
    """The mean of ``model``'s unit embeddings of ``records`` cut to ``PRIOR_FRAMES`` frames (float64)."""
    from models.train_head import centering_prior

    return centering_prior(embed_records(model, cut_tracklets(records, PRIOR_FRAMES), device, None).numpy())


def own_baseline_of(model, device) -> AvgPoolReID:
    """The honest baseline of ``model``: its backbone's own embedding, mean-pooled over the same N frames."""
    return AvgPoolReID(model.backbone, num_frames=model.num_frames, pool="embedding").to(device).eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="DRSTA checkpoint (default: the project's default checkpoint)")
    ap.add_argument(
        "--baseline",
        choices=["own", "avgpool"],
        help="instead of a checkpoint: own = the backbone's own embedding mean-pooled over the tracklet (the "
        "honest baseline); avgpool = mean of the raw feature grid (not deployable, for reference only)",
    )
    ap.add_argument(
        "--compare", choices=["own", "none"], default="own", help="baseline printed beside a checkpoint"
    )
    ap.add_argument("--backbone", default="osnet_x0_25", help="backbone of --baseline")
    ap.add_argument("--backbone-weights", help="path or URL of the backbone weights")
    ap.add_argument("--dataset", default="folder", choices=[*sorted(DATASETS), "splitview"])
    ap.add_argument("--root", required=True, help="dataset root folder")
    ap.add_argument("--ids", help="folder layout: identities to use (comma list, or JSON file with val_ids)")
    ap.add_argument("--split", type=int, default=0, help="PRID2011 / iLIDS-VID split number (0-9)")
    ap.add_argument(
        "--look", default="same", choices=["same", "unlike"], help="splitview: the right camera's look"
    )
    ap.add_argument(
        "--piece",
        type=int,
        help="splitview: cut each ground-truth tracklet into pieces of about this many crops (more queries)",
    )
    ap.add_argument(
        "--camera-look",
        type=int,
        metavar="SEED",
        help="every identity's second camera seen through a random camera look drawn with this seed "
        "(models/camera_looks.py; looked images cached under ~/.cache/reid-pipeline)",
    )
    ap.add_argument("--num-frames", type=int, default=6, help="N, frames the baseline samples per tracklet")
    ap.add_argument(
        "--frames", type=int, nargs="+", default=[6, 2], help="frames per tracklet settings (0: all frames)"
    )
    ap.add_argument(
        "--center",
        choices=CENTERINGS,
        default="none",
        help="camera: centre every model's embeddings by camera before ranking (see the module doc)",
    )
    ap.add_argument(
        "--prior-root",
        help="--center camera: PKU folder holding the checkpoint's train_ids, for a baseline's prior "
        "(default: the folder recorded in the checkpoint, else ../shared/data/pku-reid)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="write the metrics as JSON here")
    ap.add_argument("--plot", help="draw the CMC curves into this PNG")
    args = ap.parse_args(argv)
    configure_torch()
    try:
        device = resolve_device(args.device)
        models: dict[str, object] = {}
        if args.baseline:
            pool = "embedding" if args.baseline == "own" else "grid"
            models[
                f"{args.backbone} {'own embedding' if pool == 'embedding' else 'grid mean'}, mean-pooled"
            ] = load_avgpool_baseline(
                args.backbone, args.backbone_weights, num_frames=args.num_frames, pool=pool, device=device
            )
        else:
            model = load_drsta(args.checkpoint, backbone_weights=args.backbone_weights, device=device)
            name = Path(args.checkpoint).name if args.checkpoint else "default checkpoint"
            models[f"DRSTA ({name})"] = model
            if args.compare == "own":
                models[f"{model.cfg.backbone} own embedding, mean-pooled"] = own_baseline_of(model, device)
        query, gallery = load_records(
            args.dataset,
            args.root,
            ids=parse_ids(args.ids),
            split=args.split,
            look=args.look,
            piece=args.piece,
        )
        if args.camera_look is not None:
            from models.camera_looks import second_camera_looked

            same = gallery is query
            query = second_camera_looked(query, args.camera_look, LOOK_CACHE)
            gallery = query if same else second_camera_looked(gallery, args.camera_look, LOOK_CACHE)
        priors: dict[str, tuple[np.ndarray | None, str]] = {label: (None, "none") for label in models}
        if args.center == "camera":
            ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
            meta = read_checkpoint(ckpt).get("meta", {})
            prior_recs = None
            for label, m in models.items():
                if isinstance(m, DRSTA):
                    rec = checkpoint_centering(ckpt)
                    if rec is None:
                        raise CheckpointError(
                            f"{ckpt}: records no centering prior (meta centering); retrain it with "
                            "models.train_head, or evaluate with --center none"
                        )
                    priors[label] = (rec.prior, "camera (prior recorded in the checkpoint)")
                    continue
                if prior_recs is None:
                    root = prior_root_of(meta, args.prior_root)
                    prior_recs = list(read_folder(root, ids=train_ids_of(meta, ckpt)).gallery)
                desc = f"camera (prior: {len(prior_recs)} train-id tracklets @ {PRIOR_FRAMES} frames)"
                priors[label] = (embedding_prior(m, prior_recs, device), desc)
        results: dict[str, dict] = {}
        curves = {}
        for frames in args.frames:
            for label, m in models.items():
                prior, centering = priors[label]
                met = evaluate_on(m, query, gallery, device=device, frames=frames or None, prior=prior)
                key = f"{label} @ {frames or 'all'} frames"
                results[key] = {
                    **met.to_dict(),
                    "centering": centering,
                    "cmc": [round(float(v), 4) for v in met.cmc[:20]],
                }
                curves[key] = met.cmc
                cmc = " ".join(f"{v:.2f}" for v in met.cmc[:5])
                print(
                    f"{key}: rank-1 {met.rank1:.3f}  mAP {met.mAP:.3f}  CMC@1-5 {cmc}  ({met.num_query} queries)"
                    f"  centering {centering}"
                )
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    first = next(iter(results.values()))
    out = {**{k: v for k, v in first.items() if k != "cmc"}, "center": args.center, "runs": results}
    print(json.dumps(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    if args.plot:
        from models.plots import plot_cmc

        n = next(iter(results.values()))["num_query"]
        centred = ", camera-centred" if args.center == "camera" else ""
        plot_cmc(curves, Path(args.plot), title=f"CMC on {args.dataset} ({n} queries{centred})", max_rank=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
