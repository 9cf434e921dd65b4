"""A tracklet's pictures from what the re-ID network attended to: its best crops and one attention picture.

Pure functions (arrays in, :class:`TrackletPicture` records out); the re-ID worker calls them after the
forward pass, so making pictures never changes an embedding.

How pictures are chosen: each of the N sampled frames is scored by its temporal attention averaged over the
K parts (the weight the tracklet's embedding gave that frame); the ``num_crops`` best distinct crops are the
``'crop'`` pictures, rank 0 = the best (a short tracklet repeats crops among its N samples: a crop counts
once, with its best score; ties go to the earlier sample). The ``'attention'`` picture (rank 0) is the best
frame's crop followed by K panels, panel k the same crop with part k's spatial attention map blended over it
(jet colours, red = where that part looked most, as in figure 3 of the paper).

Colours are relative: each map is scaled from its own low end (its 5th percentile, so that a few outlying
cells, typically the zero-padded border, do not squeeze the rest into one colour) to its peak. A nearly
uniform map (the default checkpoint's: peaks about 0.2 % above uniform) is thus stretched to show the
structure it has, and each panel says how far from uniform the map really is ("peak/uniform 1.002": the
map's largest cell over its mean, 1 = uniform), so a flat map is not read as a sharp one. A map whose cells
differ by less than ``FLAT_SPREAD`` of their mean (float rounding, not structure) is drawn flat, one colour.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.plots import overlay_heatmap
from pipeline.privacy import blur_crop_head
from pipeline.transport.messages import TrackletPicture

__all__ = [
    "FLAT_SPREAD",
    "LABEL_HEIGHT",
    "attention_strip",
    "best_crops",
    "heat_for_display",
    "peak_over_uniform",
    "tracklet_pictures",
]

FLAT_SPREAD = 1e-4  # (max - low end) / mean below this is float rounding, drawn flat (real maps: >= 1e-3)
LOW_PERCENTILE = 5.0  # the low end of each map's colour scale
LABEL_HEIGHT = 30  # pixels of text under the attention picture's panels


def best_crops(sampled: np.ndarray, temporal: np.ndarray, num_crops: int) -> list[tuple[int, int]]:
    """The ``num_crops`` best distinct crops by temporal attention, best first.

    ``sampled`` (N,) int: the crop index fed to the network at each of the N positions; ``temporal`` (N, K):
    the temporal attention of each position for each part. Returns up to ``num_crops`` pairs
    ``(position, crop index)``, best first, each crop index once (fewer when fewer distinct crops were
    sampled); ``num_crops`` 0 returns ``[]``. Raises ``ValueError`` on mismatched shapes or ``num_crops < 0``.
    """
    sampled = np.asarray(sampled)
    temporal = np.asarray(temporal, dtype=np.float64)
    if num_crops < 0:
        raise ValueError(f"num_crops: expected an int >= 0, got {num_crops}")
    if sampled.ndim != 1 or temporal.ndim != 2 or temporal.shape[0] != sampled.shape[0]:
        raise ValueError(
            f"sampled, temporal: expected shapes (N,) and (N, K), got {sampled.shape} and {temporal.shape}"
        )
    score = temporal.mean(axis=1)  # (N, K) -> (N,): the frame's weight averaged over the parts
    picked: list[tuple[int, int]] = []
    seen: set[int] = set()
    for pos in np.argsort(-score, kind="stable"):  # stable: ties go to the earlier sample
        crop = int(sampled[pos])
        if crop not in seen and len(picked) < num_crops:
            seen.add(crop)
            picked.append((int(pos), crop))
    return picked


def peak_over_uniform(heat: np.ndarray) -> float:
    """How far from uniform one attention map is: its largest cell over its mean (1.0 = uniform).

    ``heat`` (h, w) non-negative. A spatial attention map sums to 1 over its L cells, so this is the peak
    over 1/L. Returns ``nan`` for a map whose mean is not positive.
    """
    m = np.asarray(heat, dtype=np.float64)
    mean = float(m.mean()) if m.size else 0.0
    return float(m.max()) / mean if mean > 0 else float("nan")


def heat_for_display(heat: np.ndarray) -> np.ndarray:
    """The map as it is coloured: clipped below at its 5th percentile, or all zeros when it is flat.

    ``heat`` (h, w). Returns (h, w) float32 for :func:`models.plots.overlay_heatmap`, which scales a map from
    its min (here the 5th percentile) to its max and draws a constant map in one colour. Flat means that the
    cells differ by less than ``FLAT_SPREAD`` of their mean.
    """
    m = np.asarray(heat, dtype=np.float32)
    low, peak, mean = float(np.percentile(m, LOW_PERCENTILE)), float(m.max()), float(np.abs(m).mean())
    if mean == 0.0 or (peak - low) / mean < FLAT_SPREAD:
        return np.zeros_like(m)
    return np.maximum(m, low)


def _label_band(width: int, lines: list[str]) -> np.ndarray:
    """A dark (LABEL_HEIGHT, width, 3) BGR band with ``lines`` in white, one under the other."""
    band = np.full((LABEL_HEIGHT, width, 3), 32, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(
            band, text, (3, 12 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA
        )
    return band


def attention_strip(crop_bgr: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The crop, then one panel per part with that part's map over it, side by side, labelled beneath.

    ``crop_bgr`` (H, W, 3) uint8 BGR; ``maps`` (K, h, w) spatial attention on the feature grid. Each panel
    is coloured by :func:`heat_for_display`; under it a band of ``LABEL_HEIGHT`` pixels says "part k"
    ("part k (flat)" when drawn flat) and "peak/uniform r" (:func:`peak_over_uniform`), and under the crop
    that the colours are relative. Returns (H + LABEL_HEIGHT, (1 + K) * W, 3) uint8 BGR.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps: expected (K, h, w), got {maps.shape}")
    width = crop_bgr.shape[1]
    rgb = np.ascontiguousarray(crop_bgr[..., ::-1])  # overlay_heatmap is RGB in, RGB out
    columns = [np.vstack([crop_bgr, _label_band(width, ["colours per part:", "blue 5th pct, red peak"])])]
    for k, m in enumerate(maps):
        shown = heat_for_display(m)
        ratio = peak_over_uniform(m)
        flat = " (flat)" if not shown.any() else ""
        lines = [f"part {k + 1}{flat}", f"peak/uniform {ratio:.{3 if ratio < 10 else 1}f}"]
        columns.append(np.vstack([overlay_heatmap(rgb, shown)[..., ::-1], _label_band(width, lines)]))
    return np.ascontiguousarray(np.hstack(columns))


def _jpeg(image_bgr: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image_bgr.shape}")
    return buf.tobytes()


def tracklet_pictures(
    crops: np.ndarray,
    frame_indices: np.ndarray,
    sampled: np.ndarray,
    temporal: np.ndarray,
    spatial: np.ndarray,
    grid: tuple[int, int],
    *,
    num_crops: int,
    quality: int,
    blur_heads: bool,
) -> tuple[TrackletPicture, ...]:
    """The tracklet's crop pictures and its attention picture, as JPEG.

    ``crops`` (T, H, W, 3) uint8 BGR and ``frame_indices`` (T,) are the tracklet's; ``sampled`` (N,) the
    crop indices fed to the network; ``temporal`` (N, K) and ``spatial`` (N, K, L) its attention for this
    tracklet, with ``grid`` = (h, w), L = h * w, row-major. Returns the ``'crop'`` pictures (ranks 0.. by
    :func:`best_crops`, each H x W) then one ``'attention'`` picture (rank 0, (H + ``LABEL_HEIGHT``) x
    (1 + K) * W, :func:`attention_strip`) of the best
    frame; ``num_crops`` 0 returns ``()``. ``quality`` is the JPEG quality, 1..100. ``blur_heads``
    (``privacy.blur_heads``) blurs the head region of every stored picture (:func:`pipeline.privacy.blur_crop_head`);
    the embedding never sees the blurred crops. Raises ``ValueError``
    naming the argument whose shape or value does not fit.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"quality: expected a JPEG quality in 1..100, got {quality}")
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[3] != 3 or crops.dtype != np.uint8 or crops.shape[0] == 0:
        raise ValueError(f"crops: expected (T, H, W, 3) uint8 with T >= 1, got {crops.shape} {crops.dtype}")
    frame_indices = np.asarray(frame_indices)
    if frame_indices.shape != crops.shape[:1]:
        raise ValueError(f"frame_indices: expected shape ({crops.shape[0]},), got {frame_indices.shape}")
    sampled = np.asarray(sampled)
    if sampled.size and (sampled.min() < 0 or sampled.max() >= crops.shape[0]):
        raise ValueError(f"sampled: expected crop indices in [0, {crops.shape[0]}), got {sampled.tolist()}")
    picked = best_crops(sampled, temporal, num_crops)
    if not picked:
        return ()
    spatial = np.asarray(spatial, dtype=np.float32)
    n, k = np.shape(temporal)
    h, w = (int(v) for v in grid)
    if spatial.shape != (n, k, h * w):
        raise ValueError(f"spatial: expected shape ({n}, {k}, {h}*{w}) for grid {grid}, got {spatial.shape}")
    height, width = crops.shape[1:3]
    if blur_heads:  # only the crops that become pictures
        chosen = {crop for _, crop in picked}
        crops = np.stack([blur_crop_head(c) if i in chosen else c for i, c in enumerate(crops)])
    pictures = [
        TrackletPicture(
            kind="crop",
            rank=rank,
            frame_index=int(frame_indices[crop]),
            width=width,
            height=height,
            jpeg=_jpeg(crops[crop], quality),
        )
        for rank, (_, crop) in enumerate(picked)
    ]
    pos, crop = picked[0]
    strip = attention_strip(crops[crop], spatial[pos].reshape(k, h, w))  # (K, L) -> (K, h, w)
    pictures.append(
        TrackletPicture(
            kind="attention",
            rank=0,
            frame_index=int(frame_indices[crop]),
            width=strip.shape[1],
            height=strip.shape[0],
            jpeg=_jpeg(strip, quality),
        )
    )
    return tuple(pictures)
