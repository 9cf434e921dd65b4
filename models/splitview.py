"""Ground-truth tracklets of the PETS09 split view (``../shared/data/pets09-splitview-dev``) as re-ID records.

The split view cuts ``vtest.avi`` frames 1-400 into two virtual cameras, ``left`` (x in [0, 340)) and
``right`` (x in [428, 768)); ``gt_left.txt`` / ``gt_right.txt`` hold ``frame,person,x,y,w,h,mot15_id`` in each
camera's own pixels, ``person`` being the real person. One tracklet per (camera, mot15 appearance): a person
who leaves and comes back gives two tracklets of one pid in one camera (the protocol discards those pairs).

Camera looks (``LOOKS``): both cameras are views of one physical camera, so they share its colour response,
which flatters re-ID. ``"same"`` keeps the pixels; ``"unlike"`` gives the right camera a different response:
gamma 1.4 (darker mid-tones), colour gains B x 1.15, G x 1.0, R x 0.8 (a cooler white balance) and a Gaussian
blur of sigma 1 px (a softer lens), applied to the whole right frame before cropping.

Evaluation only (the README's rule): nothing here may train or fit a model. Crops of every ``every``-th GT
frame are written once as PNG to ``cache_dir`` (outside the repository) so the folder-based evaluation code
reads them like any dataset.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from models.datasets import TrackletRecord, VideoReIDSplit

CAMERAS = {"left": (0, 340), "right": (428, 768)}  # x range of vtest.avi each camera keeps
LOOKS = ("same", "unlike")
NUM_FRAMES = 400
DEFAULT_CACHE = "~/.cache/reid-pipeline/splitview"


def unlike_look(frame_bgr: np.ndarray) -> np.ndarray:
    """The "unlike" camera response (module docstring): (H, W, 3) uint8 BGR -> same shape and dtype."""
    x = frame_bgr.astype(np.float32) / 255.0
    x = x**1.4 * np.array([1.15, 1.0, 0.8], dtype=np.float32)  # BGR gains
    x = cv2.GaussianBlur(x, (0, 0), sigmaX=1.0)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _read_gt(path: Path) -> list[tuple[int, int, float, float, float, float, int]]:
    if not path.is_file():
        raise FileNotFoundError(f"splitview: ground truth {path} not found")
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and r[0].strip().isdigit()]
    return [(int(r[0]), int(r[1]), *map(float, r[2:6]), int(r[6])) for r in rows]


def read_splitview(
    root: Path | str,
    *,
    look: str = "same",
    video: Path | str | None = None,
    every: int = 3,
    cache_dir: Path | str = DEFAULT_CACHE,
    piece: int | None = None,
) -> VideoReIDSplit:
    """Every GT tracklet of both cameras: query = gallery = all of them (evaluate every tracklet against the
    other camera). pid = ``person``, camid 0 = left, 1 = right, tracklet_id ``"<camera>/<mot15_id>"``.

    ``piece``: cut every tracklet into consecutive pieces of about ``piece`` crops (``round(len / piece)``
    pieces of near-equal length, at least one), tracklet_id ``"<camera>/<mot15_id>#<k>"``, as the pipeline
    publishes a long track in chunks. Many more queries than whole tracklets (a query's other pieces in its own
    camera are discarded by the protocol: same person, same camera), so differences of a query or two between
    models can be told from noise.

    video: ``vtest.avi`` (default ``<root>/../vtest/vtest.avi``). Raises FileNotFoundError for a missing GT
    file or video, ValueError for an unknown ``look`` or a ``piece`` below 1.
    """
    if look not in LOOKS:
        raise ValueError(f"look: expected one of {LOOKS}, got {look!r}")
    if piece is not None and piece < 1:
        raise ValueError(f"piece: expected >= 1 crops, got {piece}")
    root = Path(root)
    video = Path(video) if video is not None else root.parent / "vtest" / "vtest.avi"
    gts = {cam: _read_gt(root / f"gt_{cam}.txt") for cam in CAMERAS}
    out_dir = Path(cache_dir).expanduser() / look
    wanted: dict[int, list[tuple[str, tuple]]] = {}  # frame -> [(camera, row)]
    for cam, rows in gts.items():
        by_track: dict[int, list[tuple]] = {}
        for row in rows:
            by_track.setdefault(row[6], []).append(row)
        for track in by_track.values():
            for row in sorted(track)[::every]:
                wanted.setdefault(row[0], []).append((cam, row))
    paths = {
        (cam, row[6], row[0]): out_dir / f"{cam}_{row[6]:03d}" / f"{row[0]:04d}.png"
        for f in wanted
        for cam, row in wanted[f]
    }
    if not all(p.is_file() for p in paths.values()):
        _write_crops(video, wanted, paths, look)
    records = []
    for camid, cam in enumerate(CAMERAS):
        tracks = sorted({(row[6], row[1]) for f in wanted for c, row in wanted[f] if c == cam})
        for mot_id, person in tracks:
            frames = sorted(f for (c, m, f) in paths if c == cam and m == mot_id)
            crops = [str(paths[(cam, mot_id, f)]) for f in frames]
            if piece is None:
                records.append(TrackletRecord(tuple(crops), person, camid, f"{cam}/{mot_id}"))
                continue
            for k, part in enumerate(
                np.array_split(np.arange(len(crops)), max(1, round(len(crops) / piece)))
            ):
                records.append(
                    TrackletRecord(tuple(crops[i] for i in part), person, camid, f"{cam}/{mot_id}#{k}")
                )
    return VideoReIDSplit(train=[], query=list(records), gallery=list(records))


def _write_crops(video: Path, wanted: dict, paths: dict, look: str) -> None:
    if not video.is_file():
        raise FileNotFoundError(f"splitview: video {video} not found")
    cap = cv2.VideoCapture(str(video))
    try:
        for frame_no in tqdm(range(1, NUM_FRAMES + 1), desc=f"splitview crops ({look})", unit="frame"):
            ok, frame = cap.read()
            if not ok:
                raise ValueError(f"splitview: {video} ended before frame {frame_no}")
            for cam, row in wanted.get(frame_no, []):
                x0, x1 = CAMERAS[cam]
                view = frame[:, x0:x1]
                if look == "unlike" and cam == "right":
                    view = unlike_look(view)
                _, _, x, y, w, h, mot_id = row
                xa, ya = max(int(round(x)), 0), max(int(round(y)), 0)
                xb, yb = min(int(round(x + w)), view.shape[1]), min(int(round(y + h)), view.shape[0])
                path = paths[(cam, mot_id, frame_no)]
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.png")
                cv2.imwrite(str(tmp), view[ya:yb, xa:xb])
                os.replace(tmp, path)
    finally:
        cap.release()
