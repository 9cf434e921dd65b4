"""Restricted random sampling: chunk layout, test/train picks, the short-tracklet policy, errors."""

from __future__ import annotations

import numpy as np
import pytest

from models.sampling import restricted_random_sample


def chunk_bounds(num_frames: int, n: int) -> list[tuple[int, int]]:
    return [(i * num_frames // n, (i + 1) * num_frames // n) for i in range(n)]


@pytest.mark.parametrize(
    ("num_frames", "n", "expected"),
    [
        (1, 1, [0]),  # a tracklet of one frame
        (6, 6, [0, 1, 2, 3, 4, 5]),  # num_frames == n: every frame once
        (12, 6, [0, 2, 4, 6, 8, 10]),  # equal chunks of 2
        (13, 6, [0, 2, 4, 6, 8, 10]),  # floor(i * 13 / 6)
        (100, 1, [0]),  # n = 1: the first frame
        (100, 4, [0, 25, 50, 75]),
        (7, 3, [0, 2, 4]),
    ],
)
def test_test_mode_takes_first_frame_of_each_chunk(num_frames: int, n: int, expected: list[int]) -> None:
    out = restricted_random_sample(num_frames, n, train=False)
    assert out.dtype == np.int64
    assert out.tolist() == expected
    assert out.tolist() == [start for start, _ in chunk_bounds(num_frames, n)]


@pytest.mark.parametrize(("num_frames", "n"), [(6, 6), (7, 3), (13, 6), (100, 6), (101, 1), (1000, 8)])
def test_train_mode_picks_one_frame_inside_each_chunk(num_frames: int, n: int) -> None:
    rng = np.random.default_rng(0)
    bounds = chunk_bounds(num_frames, n)
    for _ in range(50):
        out = restricted_random_sample(num_frames, n, train=True, rng=rng)
        assert out.shape == (n,) and out.dtype == np.int64
        assert all(lo <= v < hi for v, (lo, hi) in zip(out.tolist(), bounds, strict=True))
        assert np.all(np.diff(out) >= 0)


def test_train_mode_covers_every_frame_of_a_chunk() -> None:
    # 4 chunks of 5 frames: over many draws every position of every chunk shows up (uniform, not fixed).
    rng = np.random.default_rng(1)
    draws = np.stack([restricted_random_sample(20, 4, train=True, rng=rng) for _ in range(400)])
    for chunk in range(4):
        assert set(draws[:, chunk].tolist()) == set(range(5 * chunk, 5 * chunk + 5))


def test_train_mode_is_deterministic_given_the_generator_seed() -> None:
    a = [restricted_random_sample(90, 6, train=True, rng=rng) for rng in [np.random.default_rng(7)] * 5]
    b = [restricted_random_sample(90, 6, train=True, rng=rng) for rng in [np.random.default_rng(7)] * 5]
    c = [restricted_random_sample(90, 6, train=True, rng=rng) for rng in [np.random.default_rng(8)] * 5]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("num_frames", "n", "expected"),
    [
        (1, 6, [0, 0, 0, 0, 0, 0]),
        (2, 6, [0, 0, 0, 1, 1, 1]),
        (3, 6, [0, 0, 1, 1, 2, 2]),
        (4, 6, [0, 0, 1, 2, 2, 3]),
        (5, 6, [0, 0, 1, 2, 3, 4]),
        (3, 8, [0, 0, 0, 1, 1, 1, 2, 2]),
    ],
)
@pytest.mark.parametrize("train", [False, True])
def test_short_tracklets_repeat_frames_evenly_in_order(
    num_frames: int, n: int, expected: list[int], train: bool
) -> None:
    out = restricted_random_sample(num_frames, n, train=train, rng=np.random.default_rng(0))
    assert out.tolist() == expected
    counts = np.bincount(out, minlength=num_frames)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1


@pytest.mark.parametrize(
    ("num_frames", "n", "match"), [(0, 6, "empty tracklet"), (-1, 6, "empty"), (5, 0, "n must")]
)
@pytest.mark.parametrize("train", [False, True])
def test_invalid_sizes_raise(num_frames: int, n: int, match: str, train: bool) -> None:
    with pytest.raises(ValueError, match=match):
        restricted_random_sample(num_frames, n, train=train)
