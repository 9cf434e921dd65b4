"""A tracklet's pictures from what the re-ID network attended to: its best crops and one attention picture.

Pure functions (arrays in, :class:`TrackletPicture` records out); the re-ID worker calls them after the
forward pass, so making pictures never changes an embedding.

How pictures are chosen: each of the N sampled frames is scored by its temporal attention averaged over the
K parts (the weight the tracklet's embedding gave that frame); the ``num_crops`` best distinct crops are the
``'crop'`` pictures, rank 0 = the best (a short tracklet repeats crops among its N samples: a crop counts
once, with its best score; ties go to the earlier sample). The ``'attention'`` picture (rank 0) is the best
frame's crop followed by K panels, panel k the same crop with part k's spatial attention map blended over it
(jet colours, red = where that part looked most, scaled per panel as in figure 3 of the paper).
"""

from __future__ import annotations

import cv2
import numpy as np

from models.plots import overlay_heatmap
from pipeline.privacy import blur_crop_head
from pipeline.transport.messages import TrackletPicture

__all__ = ["attention_strip", "best_crops", "tracklet_pictures"]


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


def attention_strip(crop_bgr: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The crop, then one panel per part with that part's map over it, side by side.

    ``crop_bgr`` (H, W, 3) uint8 BGR; ``maps`` (K, h, w) spatial attention on the feature grid.
    Returns (H, (1 + K) * W, 3) uint8 BGR.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps: expected (K, h, w), got {maps.shape}")
    rgb = np.ascontiguousarray(crop_bgr[..., ::-1])  # overlay_heatmap is RGB in, RGB out
    panels = [crop_bgr] + [overlay_heatmap(rgb, m)[..., ::-1] for m in maps]
    return np.ascontiguousarray(np.hstack(panels))


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
    :func:`best_crops`, each H x W) then one ``'attention'`` picture (rank 0, H x (1 + K) * W) of the best
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
