"""Camera centering: take each camera's mean embedding out before comparing across cameras.

Two real cameras differ in resolution, tone curve and colour balance, and a re-ID embedding carries part of
that difference: every person one camera films is shifted the same way. Across cameras the shift lowers the
similarity of one person to themself; within the shifted camera it raises the similarity of different people
to each other, so a query's own-camera neighbours outrank its match in the other camera (docs/drsta.md, "What
the split view taught"). Subtracting each camera's mean embedding removes the shared part, as camera-based
batch normalisation does for a network's features (Zhuang et al., ECCV 2020), with no labels and no training.

The mean of a camera with few tracklets is mostly the people it happened to see, so it is shrunk towards a
prior, the mean embedding of the checkpoint's training tracklets (``meta["centering"]["prior"]``), as if
``prior_weight`` tracklets had been seen at the prior:

    mean_c = (prior_weight * prior + sum of camera c's unit embeddings) / (prior_weight + n_c)
    centred(x) = (x / |x| - mean_c) / |x / |x| - mean_c|

Centred cosines have their own scale (different people near 0 instead of 0.3), so a matching threshold
calibrated for raw cosines does not apply to them: the checkpoint records one for each
(``models.calibrate``). Pure numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PRIOR_WEIGHT = 10.0  # tracklets' worth of trust in the prior mean; chosen before measuring (docs/matcher.md)
_TINY = 1e-12


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"vectors: expected (B, E), got shape {v.shape}")
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), _TINY)


class CameraCentering:
    """Running per-camera means with a prior; :meth:`center` uses the means as they stand, :meth:`observe`
    adds vectors to them. The matcher centres a batch with the means from before it, then observes it."""

    def __init__(self, prior: np.ndarray, *, prior_weight: float = PRIOR_WEIGHT):
        prior = np.asarray(prior, dtype=np.float64)
        if prior.ndim != 1 or not np.all(np.isfinite(prior)):
            raise ValueError(f"prior: expected a finite vector, got shape {prior.shape}")
        if not prior_weight > 0:
            raise ValueError(f"prior_weight: expected > 0, got {prior_weight}")
        self.prior = prior
        self.prior_weight = float(prior_weight)
        self._sum: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = {}

    @property
    def dim(self) -> int:
        return int(self.prior.shape[0])

    def count(self, camera_id: str) -> int:
        """How many embeddings of ``camera_id`` the mean holds (0: the mean is the prior)."""
        return self._count.get(camera_id, 0)

    def mean(self, camera_id: str) -> np.ndarray:
        n = self._count.get(camera_id, 0)
        total = self._sum.get(camera_id)
        if total is None:
            return self.prior.copy()
        return (self.prior_weight * self.prior + total) / (self.prior_weight + n)

    def _check(self, camera_ids: Sequence[str], v: np.ndarray) -> None:
        if v.shape[1] != self.dim:
            raise ValueError(f"vectors: expected {self.dim} values each (the prior's), got {v.shape[1]}")
        if len(camera_ids) != len(v):
            raise ValueError(f"camera_ids: {len(camera_ids)} for {len(v)} vectors")

    def center(self, camera_ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """(B, E) float32 unit vectors: each unit vector minus its camera's mean, renormalised. A vector equal to
        its camera's mean (nothing left) stays as it was."""
        v = _unit(vectors)
        self._check(camera_ids, v)
        means = {c: self.mean(c) for c in set(camera_ids)}
        out = v - np.stack([means[c] for c in camera_ids])
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.where(norm > 1e-6, out / np.maximum(norm, _TINY), v)
        return out.astype(np.float32)

    def observe(self, camera_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add these embeddings (normalised here) to their cameras' means."""
        v = _unit(vectors)
        self._check(camera_ids, v)
        for c, x in zip(camera_ids, v, strict=True):
            if c in self._sum:
                self._sum[c] += x
            else:
                self._sum[c] = x.copy()
            self._count[c] = self._count.get(c, 0) + 1


def center_by_camera(
    vectors: np.ndarray, camera_ids: Sequence, prior: np.ndarray, *, prior_weight: float = PRIOR_WEIGHT
) -> np.ndarray:
    """Offline centring of a finished set: every vector observed first, then each centred with its camera's
    mean over the whole set (what the matcher does on a restart, and what evaluation and calibration use)."""
    cams = [str(c) for c in camera_ids]
    cc = CameraCentering(prior, prior_weight=prior_weight)
    cc.observe(cams, vectors)
    return cc.center(cams, vectors)


__all__ = ["PRIOR_WEIGHT", "CameraCentering", "center_by_camera"]
