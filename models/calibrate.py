"""The matching threshold that comes with a model: chosen on validation pairs, stored in its checkpoint.

Cosine scales differ between models (OMZ 0277 on PKU: about 0.41 for the same person against 0.04 for
different people; other models elsewhere), so one global default cannot suit them all. A pair of tracklets
from *different cameras* is a *same* pair when they show one person, else a *different* pair; a threshold
``τ`` merges a pair when ``cosine >= τ``. Its operating point:

* false-merge rate: share of different pairs with ``cosine >= τ`` (two people made one identity);
* miss rate: share of same pairs with ``cosine < τ`` (one person split into two identities).

Rule (``RULE``): the lowest miss rate whose false-merge rate is at most ``max_false_merge`` (always
reachable: above every score nothing merges), then the lowest false-merge rate; the threshold sits midway
between two neighbouring scores, in the middle of the run of equally good ones (the widest margin).
Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RULE = "lowest miss rate with false-merge rate <= {max_false_merge}, midway between neighbouring scores"


@dataclass(frozen=True)
class OperatingPoint:
    """A calibrated threshold and what it stands for on the pairs it was chosen on."""

    threshold: float
    false_merge_rate: float
    miss_rate: float
    same_pairs: int
    different_pairs: int
    rule: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def cross_camera_pairs(
    embeddings: np.ndarray, pids: np.ndarray, camids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of every unordered pair of tracklets from different cameras: (same, different).

    embeddings (T, D) (normalised here), pids (T,), camids (T,). Pairs within one camera are left out: the
    matcher links across cameras, and within a camera the tracker decides.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected (T, D), got {emb.shape}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    pids, camids = np.asarray(pids), np.asarray(camids)
    if pids.shape != (len(emb),) or camids.shape != (len(emb),):
        raise ValueError(f"pids, camids: expected shape ({len(emb)},), got {pids.shape} and {camids.shape}")
    sim = emb @ emb.T
    i, j = np.triu_indices(len(emb), k=1)
    cross = camids[i] != camids[j]
    i, j = i[cross], j[cross]
    same = pids[i] == pids[j]
    return sim[i, j][same], sim[i, j][~same]


def calibrate_threshold(
    same: np.ndarray, different: np.ndarray, *, max_false_merge: float = 0.01
) -> OperatingPoint:
    """Choose ``τ`` by ``RULE`` from similarities of same pairs and different pairs (1-D arrays).

    Raises ValueError when either set is empty (there is nothing to calibrate on) or ``max_false_merge`` is
    outside [0, 1].
    """
    same = np.asarray(same, dtype=np.float64).ravel()
    different = np.asarray(different, dtype=np.float64).ravel()
    if same.size == 0 or different.size == 0:
        raise ValueError(
            f"calibrate_threshold: needs same and different pairs, got {same.size} and {different.size}"
        )
    if not 0.0 <= max_false_merge <= 1.0:
        raise ValueError(f"max_false_merge: expected [0, 1], got {max_false_merge}")
    scores = np.unique(np.concatenate([same, different]))  # sorted
    # candidate thresholds: below everything, midway between neighbours, above everything
    cands = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-6]])
    fm = (different[None, :] >= cands[:, None]).mean(axis=1)
    miss = (same[None, :] < cands[:, None]).mean(axis=1)
    ok = fm <= max_false_merge + 1e-12
    best_miss = miss[ok].min()
    good = ok & (miss == best_miss)
    chosen = np.flatnonzero(good & (fm == fm[good].min()))
    # equal operating points form a run of candidates: take its middle one, the widest margin
    k = chosen[len(chosen) // 2]
    return OperatingPoint(
        threshold=float(cands[k]),
        false_merge_rate=float(fm[k]),
        miss_rate=float(miss[k]),
        same_pairs=int(same.size),
        different_pairs=int(different.size),
        rule=RULE.format(max_false_merge=max_false_merge),
    )
