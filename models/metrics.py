"""Re-identification metrics: cosine distances, CMC and mAP under the cross-camera protocol.

Pure numpy functions, no I/O. The protocol is the one of Market-1501 and MARS:

* For each query, gallery entries with the query's pid **and** the query's camera are discarded: finding the
  same person in the same camera is tracking, not re-identification.
* Gallery entries with pid ``-1`` are junk (bad detections) and are discarded for every query; pid ``0`` are
  distractors, kept and never a true match.
* Queries whose pid is ``-1`` or ``0`` have no identity to look for and are skipped, as are queries with no
  true match left in the gallery after discarding. Real identities therefore need pids ``>= 1``.
* The gallery is ranked by ascending distance with a *stable* sort: equal distances keep gallery order.
* CMC at rank ``k`` is the fraction of valid queries whose first true match is within the top ``k`` of the
  kept list; AP is the mean, over the true-match positions ``i`` (1-based) of the kept list, of
  ``(true matches among the first i) / i``; mAP is its mean over valid queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ReIDMetrics", "cosine_distance", "evaluate_rank", "evaluate_all_vs_other_cameras"]

JUNK_PID = -1
DISTRACTOR_PID = 0

# Queries are ranked in blocks so the (block, G) temporaries stay small even for Market-sized galleries.
_QUERY_BLOCK = 256


@dataclass(frozen=True)
class ReIDMetrics:
    """Result of :func:`evaluate_rank`.

    ``cmc`` (G,) float64 is the full CMC curve: ``cmc[k - 1]`` is the fraction of valid queries whose first
    true match is within the top ``k``; it ends at 1.0 since every valid query has a match. ``rank1`` ..
    ``rank20`` read it with saturation (a rank beyond the gallery takes the last value). ``num_query`` counts
    the valid queries only. ``ranks`` are the ranks :meth:`to_dict` reports.
    """

    cmc: np.ndarray = field(repr=False, compare=False)
    rank1: float
    rank5: float
    rank10: float
    rank20: float
    mAP: float
    num_query: int
    ranks: tuple[int, ...] = (1, 5, 10, 20)

    def rank(self, k: int) -> float:
        """CMC at rank ``k`` (1-based), saturating at the last value beyond the gallery size."""
        if k < 1:
            raise ValueError(f"rank: expected k >= 1, got {k}")
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def to_dict(self) -> dict[str, float | int]:
        """``{"rank1": .., "rank5": .., "rank10": .., "rank20": .., "mAP": .., "num_query": ..}``.

        One ``"rank{k}"`` key per entry of ``ranks`` (the default gives exactly the keys above), then
        ``"mAP"`` and ``"num_query"``; plain Python numbers, ready for JSON.
        """
        out: dict[str, float | int] = {f"rank{k}": self.rank(k) for k in self.ranks}
        out["mAP"] = float(self.mAP)
        out["num_query"] = int(self.num_query)
        return out


def cosine_distance(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``1 - cos(query_i, gallery_j)`` for every pair: (Q, D), (G, D) -> (Q, G) float64 in ``[0, 2]``.

    Inputs need not be L2-normalised. A zero vector has cosine similarity 0 with everything, so its
    distances are 1.0 (never NaN). Empty ``Q`` or ``G`` give an empty (Q, G) matrix.
    Raises ``ValueError`` if either input is not 2-D or their widths ``D`` differ.
    """
    q = np.asarray(query, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    if q.ndim != 2:
        raise ValueError(f"query: expected shape (Q, D), got {q.shape}")
    if g.ndim != 2 or g.shape[1] != q.shape[1]:
        raise ValueError(f"gallery: expected shape (G, {q.shape[1]}) to match query, got {g.shape}")
    # Dividing by max(norm, tiny) leaves zero vectors at zero instead of producing 0/0.
    tiny = np.finfo(np.float64).tiny
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), tiny)
    gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), tiny)
    sim = np.clip(qn @ gn.T, -1.0, 1.0)  # rounding can push |cos| a hair past 1
    return 1.0 - sim


def _column(name: str, value, n: int | None, integer: bool) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        raise ValueError(f"{name}: expected shape ({'N' if n is None else n},), got {arr.shape}")
    if integer and arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer pids, got dtype {arr.dtype}")
    return arr.astype(np.int64) if integer else arr


def evaluate_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    *,
    ranks: Sequence[int] = (1, 5, 10, 20),
) -> ReIDMetrics:
    """CMC and mAP of a query-gallery distance matrix under the cross-camera protocol (see module doc).

    ``distmat`` (Q, G), smaller is closer; ``q_pids`` (Q,) and ``g_pids`` (G,) integer person ids;
    ``q_camids`` (Q,) and ``g_camids`` (G,) camera ids of any comparable dtype (ints or strings). ``ranks``
    (each ``>= 1``) are the ranks reported by :meth:`ReIDMetrics.to_dict`; ranks past the gallery size
    saturate at the last CMC value.

    Raises ``ValueError`` on mismatched shapes, non-integer pids, NaN distances, or when no query is valid
    (empty query set or gallery, or no query has a true match in another camera): an average over nothing
    is an error, not NaN.
    """
    dist = np.asarray(distmat, dtype=np.float64)
    if dist.ndim != 2:
        raise ValueError(f"distmat: expected shape (Q, G), got {dist.shape}")
    num_q, num_g = dist.shape
    q_pids = _column("q_pids", q_pids, num_q, integer=True)
    g_pids = _column("g_pids", g_pids, num_g, integer=True)
    q_camids = _column("q_camids", q_camids, num_q, integer=False)
    g_camids = _column("g_camids", g_camids, num_g, integer=False)
    ranks = tuple(int(k) for k in ranks)
    if any(k < 1 for k in ranks):
        raise ValueError(f"ranks: expected every rank >= 1, got {ranks}")
    if np.isnan(dist).any():
        raise ValueError("distmat: contains NaN")

    first_hit = np.zeros(
        num_g, dtype=np.int64
    )  # first_hit[r]: valid queries whose first match is at rank r+1
    ap_sum = 0.0
    num_valid = 0
    for start in range(0, num_q, _QUERY_BLOCK):
        stop = min(start + _QUERY_BLOCK, num_q)
        qp = q_pids[start:stop, None]
        qc = q_camids[start:stop, None]
        order = np.argsort(dist[start:stop], axis=1, kind="stable")  # (B, G), ties keep gallery order
        gp = g_pids[order]  # (B, G) gallery pids in ranked order
        same_pid = gp == qp
        keep = (gp != JUNK_PID) & ~(same_pid & (g_camids[order] == qc))
        match = same_pid & keep
        kept_rank = np.cumsum(keep, axis=1)  # 1-based position in the kept list (valid where keep)
        num_rel = match.sum(axis=1)
        valid = (num_rel > 0) & (q_pids[start:stop] > DISTRACTOR_PID)
        if not valid.any():
            continue
        match, kept_rank, num_rel = match[valid], kept_rank[valid], num_rel[valid]
        first = kept_rank[np.arange(len(match)), match.argmax(axis=1)]  # argmax: first True
        first_hit += np.bincount(first - 1, minlength=num_g)
        hits_so_far = np.cumsum(match, axis=1)
        precision = np.where(match, hits_so_far / np.maximum(kept_rank, 1), 0.0)
        ap_sum += float((precision.sum(axis=1) / num_rel).sum())
        num_valid += int(valid.sum())

    if num_valid == 0:
        raise ValueError(
            f"evaluate_rank: no valid query among {num_q} queries and {num_g} gallery entries: every query "
            "is junk/distractor or has no true match in another camera"
        )
    cmc = np.cumsum(first_hit) / num_valid
    at = {k: float(cmc[min(k, num_g) - 1]) for k in (1, 5, 10, 20)}
    return ReIDMetrics(
        cmc=cmc,
        rank1=at[1],
        rank5=at[5],
        rank10=at[10],
        rank20=at[20],
        mAP=ap_sum / num_valid,
        num_query=num_valid,
        ranks=ranks,
    )


def evaluate_all_vs_other_cameras(
    embeddings: np.ndarray,
    pids: np.ndarray,
    camids: np.ndarray,
    *,
    ranks: Sequence[int] = (1, 5, 10, 20),
) -> ReIDMetrics:
    """Every tracklet queried against all tracklets by cosine distance: (T, D), (T,), (T,) -> metrics.

    A tracklet never finds itself: it has its own pid and camera, so the same-camera rule discards it, along
    with every other tracklet of the same person in the same camera. Raises ``ValueError`` as
    :func:`evaluate_rank` does, e.g. when no identity appears in two cameras.
    """
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"embeddings: expected shape (T, D), got {emb.shape}")
    pids = _column("pids", pids, emb.shape[0], integer=True)
    camids = _column("camids", camids, emb.shape[0], integer=False)
    dist = cosine_distance(emb, emb)
    return evaluate_rank(dist, pids, pids, camids, camids, ranks=ranks)
