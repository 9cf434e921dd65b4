"""Draw what DRSTA looks at: the N sampled frames, the K spatial attention maps over each, the temporal weights.

    python -m models.visualize [--checkpoint CKPT] --tracklet DIR [--glob '01_*.png'] --out FILE.png

``DIR`` holds the frames of one tracklet as image files, in temporal order by name (``--glob`` picks some of
them, e.g. one camera of a ``<pid>/<cam>_<k>.png`` folder). The picture follows figure 3 of the paper.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import cv2
import numpy as np

from models.checkpoint import CheckpointError, load_drsta, resolve_device
from models.drsta import DRSTA
from models.plots import plot_attention
from models.runtime import configure_torch
from models.sampling import restricted_random_sample

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def tracklet_frames(folder: str | Path, pattern: str = "*") -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--tracklet: {folder} is not a folder")
    files = sorted((p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_EXTS), key=_natural_key)
    if not files:
        raise FileNotFoundError(f"--tracklet: no images matching {pattern!r} in {folder}")
    return files


def draw_tracklet_attention(model: DRSTA, files: list[Path], out: str | Path, title: str = "") -> Path:
    """Embed the tracklet (test-time sampling) and draw its attention; returns the PNG path."""
    idx = restricted_random_sample(len(files), model.num_frames, train=False)
    images = []
    for i in idx:
        img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{files[i]}: unreadable image")
        images.append(img)
    crops = np.stack([cv2.resize(im, (128, 256), interpolation=cv2.INTER_LINEAR) for im in images])
    x = model.preprocess(crops)[None].to(next(model.parameters()).device)  # (1, N, 3, H, W)
    res = model.embed(x)
    h, w = res.grid_size
    spatial = res.spatial_attention[0].cpu().numpy()  # (N, K, L)
    spatial = spatial.reshape(spatial.shape[0], spatial.shape[1], h, w)  # (N, K, L) -> (N, K, h, w)
    temporal = res.temporal_attention[0].cpu().numpy()  # (N, K)
    rgb = crops[..., ::-1].copy()
    return plot_attention(rgb, spatial, temporal, Path(out), title=title)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.visualize", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="DRSTA checkpoint (default: the project's default checkpoint)")
    ap.add_argument("--backbone-weights", help="path or URL of the backbone weights")
    ap.add_argument("--tracklet", required=True, help="folder with the frames of one tracklet")
    ap.add_argument("--glob", default="*", help="which files of the folder (default: all images)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    configure_torch()
    try:
        model = load_drsta(
            args.checkpoint, backbone_weights=args.backbone_weights, device=resolve_device(args.device)
        )
        files = tracklet_frames(args.tracklet, args.glob)
        title = f"{Path(args.tracklet).name} {args.glob if args.glob != '*' else ''}".strip()
        out = draw_tracklet_attention(model, files, args.out, title=title)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
