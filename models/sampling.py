"""Restricted random sampling of a tracklet's frames (DRSTA, Li et al. CVPR 2018, section 3.1 and 4.2).

A tracklet of ``num_frames`` frames is divided into ``n`` chunks of equal duration; training draws one frame
uniformly at random from every chunk, testing takes the first frame of every chunk. The sampled indices keep
temporal order, so the network sees the whole tracklet at a fixed cost of ``n`` frames.
"""

from __future__ import annotations

import numpy as np

__all__ = ["restricted_random_sample"]


def restricted_random_sample(
    num_frames: int, n: int, *, train: bool, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Pick ``n`` frame indices of a tracklet of ``num_frames`` frames, one per chunk of equal duration.

    Chunk ``i`` (0-based) is ``[floor(i * num_frames / n), floor((i + 1) * num_frames / n))``.

    - ``train=True``: one index drawn uniformly from each chunk with ``rng`` (a fresh, unseeded generator
      when ``rng`` is None); the same ``rng`` state gives the same indices.
    - ``train=False``: the first index of each chunk; ``rng`` is not used.

    Short tracklets (``num_frames < n``) would leave some chunks empty. Policy: the frames are repeated
    evenly instead, index ``i`` being ``floor(i * num_frames / n)``, in training and at test time alike
    (every frame is used, the repeat counts of any two frames differ by at most one, order is preserved and
    no randomness is drawn). Example: ``num_frames=2, n=6`` gives ``[0, 0, 0, 1, 1, 1]``.

    Returns an int64 array of shape ``(n,)``, non-decreasing, every value in ``[0, num_frames)``.
    Raises ``ValueError`` when ``num_frames < 1`` (an empty tracklet has nothing to sample) or ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"restricted_random_sample: n must be >= 1, got n={n}")
    if num_frames < 1:
        raise ValueError(
            f"restricted_random_sample: num_frames={num_frames}: cannot sample frames from an empty tracklet"
        )
    chunk = np.arange(n + 1, dtype=np.int64)
    bounds = chunk * num_frames // n  # (n + 1,) chunk boundaries, bounds[0] = 0, bounds[n] = num_frames
    starts = bounds[:-1]
    if not train or num_frames < n:
        return starts
    if rng is None:
        rng = np.random.default_rng()
    lengths = bounds[1:] - starts  # every chunk holds >= 1 frame because num_frames >= n
    return starts + rng.integers(0, lengths, dtype=np.int64)
