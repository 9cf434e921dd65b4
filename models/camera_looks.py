"""Random camera looks: the differences between two real cameras, drawn at random, for training only.

Two cameras of one site see the same person through different optics, sensors and settings. A look is one
draw of five such differences, applied in this order to a crop (H, W, 3) uint8 BGR:

1. resolution: resized to a factor in ``scale`` (INTER_AREA) and back (INTER_LINEAR), a lower-resolution or
   farther camera;
2. gamma in ``gamma``: ``v -> 255 (v / 255) ** gamma`` (a different tone curve);
3. white balance: independent gains on B, G and R in ``gain``, then brightness ``v * b`` with b in
   ``brightness`` (a different colour response and exposure);
4. lens softness: a Gaussian blur with sigma in ``blur`` (drawn 0 half of the time);
5. compression: JPEG at a quality in ``jpeg``.

One look is one camera: every frame of a tracklet gets the same draw (``look_for(key, index, seed)`` is
deterministic in its key), as every frame of a real camera shares its response; keyed by a camera rather
than a tracklet (``train_head``'s ``look_scope: camera``), every person that camera films shares it too. The ranges are wide
generic camera differences, not fitted to any evaluation camera; ``docs/drsta.md`` says what was chosen while
looking at which numbers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class LookRanges:
    """Uniform ranges of one camera look (module docstring)."""

    scale: tuple[float, float] = (0.4, 1.0)
    gamma: tuple[float, float] = (0.7, 1.5)
    gain: tuple[float, float] = (0.75, 1.25)
    brightness: tuple[float, float] = (0.7, 1.3)
    blur: tuple[float, float] = (0.0, 1.5)
    jpeg: tuple[int, int] = (15, 95)


@dataclass(frozen=True)
class CameraLook:
    """One drawn look; ``apply`` is deterministic."""

    scale: float
    gamma: float
    gains: tuple[float, float, float]  # B, G, R
    brightness: float
    blur: float
    jpeg: int

    def apply(self, crop_bgr: np.ndarray) -> np.ndarray:
        if crop_bgr.ndim != 3 or crop_bgr.shape[2] != 3 or crop_bgr.dtype != np.uint8:
            raise ValueError(f"crop: expected (H, W, 3) uint8 BGR, got {crop_bgr.shape} {crop_bgr.dtype}")
        h, w = crop_bgr.shape[:2]
        out = crop_bgr
        if self.scale < 1.0:
            small = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
            out = cv2.resize(cv2.resize(out, small, interpolation=cv2.INTER_AREA), (w, h))
        x = out.astype(np.float32) / 255.0
        x = x**self.gamma * (np.array(self.gains, dtype=np.float32) * self.brightness)
        if self.blur > 0:
            x = cv2.GaussianBlur(x, (0, 0), sigmaX=self.blur)
        out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg)])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def draw_look(rng: np.random.Generator, ranges: LookRanges = LookRanges()) -> CameraLook:
    """One camera look drawn uniformly from ``ranges``."""

    def u(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(*lo_hi))

    return CameraLook(
        scale=u(ranges.scale),
        gamma=u(ranges.gamma),
        gains=(u(ranges.gain), u(ranges.gain), u(ranges.gain)),
        brightness=u(ranges.brightness),
        blur=u(ranges.blur) if rng.random() < 0.5 else 0.0,
        jpeg=int(rng.integers(ranges.jpeg[0], ranges.jpeg[1] + 1)),
    )


def look_for(key: str, index: int, seed: int, ranges: LookRanges = LookRanges()) -> CameraLook:
    """The ``index``-th look of the tracklet ``key``: the same for every frame of it, and on every run."""
    digest = hashlib.sha256(f"{seed}/{index}/{key}".encode()).digest()
    return draw_look(np.random.default_rng(int.from_bytes(digest[:8], "little")), ranges)


def second_camera_looked(records: list, seed: int, cache_dir: str | Path) -> list:
    """Evaluation: every identity's cameras after its first seen through a random camera look.

    ``records`` are TrackletRecords; a tracklet whose camera is not its identity's lowest camera id gets the
    look ``look_for(tracklet_id, 0, seed)`` on each of its images, written once as PNG under ``cache_dir``
    (outside the repository) and substituted for its paths. Pick a ``seed`` no training run uses, so the
    looks are ones no model was trained on.
    """
    first: dict[int, int] = {}
    for r in records:
        first[r.pid] = min(first.get(r.pid, r.camid), r.camid)
    out_dir = Path(cache_dir).expanduser() / f"looks-seed{seed}"
    out = []
    for r in records:
        if r.camid == first[r.pid]:
            out.append(r)
            continue
        look = look_for(r.tracklet_id, 0, seed)
        paths = []
        for p in r.paths:
            digest = hashlib.sha256(f"{r.tracklet_id}/{p}".encode()).hexdigest()[:20]
            dst = out_dir / f"{digest}.png"
            if not dst.is_file():
                image = cv2.imread(p, cv2.IMREAD_COLOR)
                if image is None:
                    raise FileNotFoundError(f"camera look: cannot read image {p}")
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_suffix(".tmp.png")
                cv2.imwrite(str(tmp), look.apply(image))
                os.replace(tmp, dst)
            paths.append(str(dst))
        out.append(replace(r, paths=tuple(paths)))
    return out
