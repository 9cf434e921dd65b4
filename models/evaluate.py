"""Evaluate a re-ID model on a video re-ID dataset: CMC (rank-1/5/10/20) and mAP.

    python -m models.evaluate [--checkpoint CKPT] --dataset folder --root DIR [--json OUT] [--plot CMC.png]
    python -m models.evaluate --baseline avgpool --backbone osnet_x0_25 --backbone-weights PATH --dataset ...

Without ``--checkpoint`` the project's default checkpoint is evaluated. For the folder layout every tracklet
is a query against the tracklets of the other cameras (same identity + same camera is discarded, the
standard cross-camera rule); ``--ids`` restricts the identities (a comma list, or a JSON file with a
``val_ids`` list, such as the one written next to the default checkpoint). Other datasets use their official
query/gallery protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.checkpoint import CheckpointError, load_avgpool_baseline, load_drsta, resolve_device
from models.datasets import DATASETS, get_reader
from models.metrics import ReIDMetrics
from models.runtime import configure_torch
from models.train import evaluate_records


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


def evaluate_model(
    model, dataset: str, root: str | Path, *, ids=None, split: int = 0, device="cpu"
) -> ReIDMetrics:
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
    # readers whose protocol is "every tracklet against the other cameras" give equal lists: embed once
    return evaluate_records(model, query, query if gallery == query else gallery, device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="DRSTA checkpoint (default: the project's default checkpoint)")
    ap.add_argument(
        "--baseline",
        choices=["avgpool", "avgpool-embedding"],
        help="instead of a checkpoint, a pretrained backbone with temporal average pooling of its feature grid "
        "(avgpool: the features DRSTA sees) or of its own image embedding (avgpool-embedding: OSNet's 512-d head)",
    )
    ap.add_argument("--backbone", default="osnet_x0_25", help="backbone of the baseline")
    ap.add_argument("--backbone-weights", help="path or URL of the backbone weights")
    ap.add_argument("--dataset", default="folder", choices=sorted(DATASETS))
    ap.add_argument("--root", required=True, help="dataset root folder")
    ap.add_argument("--ids", help="folder layout: identities to use (comma list, or JSON file with val_ids)")
    ap.add_argument("--split", type=int, default=0, help="PRID2011 / iLIDS-VID split number (0-9)")
    ap.add_argument("--num-frames", type=int, default=6, help="frames per tracklet for the baseline")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="write the metrics as JSON here")
    ap.add_argument("--plot", help="draw the CMC curve into this PNG")
    args = ap.parse_args(argv)
    configure_torch()
    try:
        device = resolve_device(args.device)
        if args.baseline:
            pool = "grid" if args.baseline == "avgpool" else "embedding"
            model = load_avgpool_baseline(
                args.backbone, args.backbone_weights, num_frames=args.num_frames, pool=pool, device=device
            )
            label = f"{args.baseline} {args.backbone}"
        else:
            model = load_drsta(args.checkpoint, backbone_weights=args.backbone_weights, device=device)
            label = f"DRSTA {Path(args.checkpoint).name if args.checkpoint else '(default checkpoint)'}"
        m = evaluate_model(
            model, args.dataset, args.root, ids=parse_ids(args.ids), split=args.split, device=device
        )
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    result = m.to_dict()
    print(json.dumps(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        from models.plots import plot_cmc

        plot_cmc({label: m.cmc}, Path(args.plot), title=f"CMC on {args.dataset} ({m.num_query} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
