"""Plots: PNG files that exist, decode and have sensible sizes; overlays that put red where attention is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.plots import overlay_heatmap, plot_attention, plot_cmc

REPO = Path(__file__).resolve().parents[1]


def _read_png(path: Path) -> np.ndarray:
    assert path.is_file()
    assert path.stat().st_size > 5_000  # a blank or broken figure is much smaller
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"cv2 could not decode {path}"
    return img


def _attention_inputs(n: int, k: int, h: int = 64, w: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    logits = rng.normal(size=(n, k, 8, 4))
    spatial = np.exp(logits) / np.exp(logits).sum(axis=(2, 3), keepdims=True)  # each map sums to 1
    t = rng.random((n, k))
    temporal = t / t.sum(axis=0, keepdims=True)  # each column sums to 1 over frames
    return frames, spatial, temporal


def test_importing_plots_does_not_load_matplotlib():
    code = "import sys, models.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "curves",
    [
        pytest.param({"only": np.array([0.7])}, id="one-rank"),
        pytest.param({"a": np.linspace(0.5, 1.0, 20)}, id="one-curve"),
        pytest.param(
            {"drsta": np.linspace(0.6, 1.0, 100), "avg-pool": np.linspace(0.4, 1.0, 100) ** 0.5},
            id="two-curves",
        ),
    ],
)
def test_plot_cmc_writes_png(tmp_path, curves):
    out = plot_cmc(curves, tmp_path / "sub" / "cmc.png", title="test")
    assert out == tmp_path / "sub" / "cmc.png"
    img = _read_png(out)
    assert img.shape == (450, 600, 3)  # 6 x 4.5 inches at 100 dpi


def test_plot_cmc_max_rank_accepts_short_curves(tmp_path):
    out = plot_cmc(
        {"short": np.array([0.2, 1.0]), "long": np.linspace(0.1, 1.0, 200)}, tmp_path / "c.png", max_rank=50
    )
    _read_png(out)


@pytest.mark.parametrize(
    ("curves", "kwargs", "message"),
    [
        ({}, {}, "curves"),
        ({"empty": np.array([])}, {}, "'empty'"),
        ({"2d": np.ones((2, 3))}, {}, "'2d'"),
        ({"percent": np.array([50.0, 100.0])}, {}, "'percent'"),
        ({"nan": np.array([np.nan])}, {}, "'nan'"),
        ({"ok": np.array([1.0])}, {"max_rank": 0}, "max_rank"),
    ],
)
def test_plot_cmc_rejects_bad_curves(tmp_path, curves, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plot_cmc(curves, tmp_path / "cmc.png", **kwargs)
    assert not (tmp_path / "cmc.png").exists()


@pytest.mark.parametrize(("n", "k"), [(1, 1), (3, 2), (6, 6)])
def test_plot_attention_writes_png(tmp_path, n, k):
    frames, spatial, temporal = _attention_inputs(n, k)
    out = plot_attention(frames, spatial, temporal, tmp_path / "att.png", title="tracklet 7")
    img = _read_png(out)
    h, w = img.shape[:2]
    # K + 1 panels of 1.25 in per row; rows of tall (2:1) panels, so height grows with N, width with K.
    assert w == pytest.approx((k + 1) * 125 + 40, abs=2)
    assert h > n * 250
    assert h < n * 300 + 100


@pytest.mark.parametrize(
    ("frames", "spatial", "temporal", "message"),
    [
        pytest.param((0, 64, 32, 3), (0, 2, 8, 4), (0, 2), "frames_rgb", id="empty-N"),
        pytest.param((3, 64, 32), (3, 2, 8, 4), (3, 2), "frames_rgb", id="frames-3d"),
        pytest.param((3, 64, 32, 4), (3, 2, 8, 4), (3, 2), "frames_rgb", id="frames-4-channels"),
        pytest.param((3, 64, 32, 3), (2, 2, 8, 4), (3, 2), "spatial", id="spatial-N"),
        pytest.param((3, 64, 32, 3), (3, 2, 8), (3, 2), "spatial", id="spatial-3d"),
        pytest.param((3, 64, 32, 3), (3, 0, 8, 4), (3, 0), "spatial", id="no-parts"),
        pytest.param((3, 64, 32, 3), (3, 2, 0, 4), (3, 2), "spatial", id="empty-map"),
        pytest.param((3, 64, 32, 3), (3, 2, 8, 4), (2, 3), "temporal", id="temporal-transposed"),
        pytest.param((3, 64, 32, 3), (3, 2, 8, 4), (3,), "temporal", id="temporal-1d"),
    ],
)
def test_plot_attention_rejects_bad_shapes(tmp_path, frames, spatial, temporal, message):
    with pytest.raises(ValueError, match=message):
        plot_attention(np.zeros(frames, np.uint8), np.ones(spatial), np.ones(temporal), tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize(
    ("frames", "spatial", "temporal", "message"),
    [
        (np.zeros((1, 8, 8, 3), np.float32), np.ones((1, 1, 2, 2)), np.ones((1, 1)), "frames_rgb"),
        (np.zeros((1, 8, 8, 3), np.uint8), np.full((1, 1, 2, 2), np.nan), np.ones((1, 1)), "spatial"),
        (np.zeros((1, 8, 8, 3), np.uint8), np.ones((1, 1, 2, 2)), np.full((1, 1), np.inf), "temporal"),
    ],
)
def test_plot_attention_rejects_bad_values(tmp_path, frames, spatial, temporal, message):
    with pytest.raises(ValueError, match=message):
        plot_attention(frames, spatial, temporal, tmp_path / "a.png")


@pytest.mark.parametrize(
    ("peak", "hot", "cold"),
    [
        # One hot cell of a 4x2 map, upsampled to 64x32: the hot corner turns red, the far one blue.
        ((0, 0), (2, 2), (61, 29)),
        ((3, 1), (61, 29), (2, 2)),
    ],
)
def test_overlay_heatmap_puts_red_where_attention_is(peak, hot, cold):
    frame = np.full((64, 32, 3), 128, np.uint8)
    heat = np.zeros((4, 2))
    heat[peak] = 1.0
    out = overlay_heatmap(frame, heat, alpha=0.5)
    assert out.shape == (64, 32, 3) and out.dtype == np.uint8
    r, _, b = (int(v) for v in out[hot])
    assert r > b + 40
    r, _, b = (int(v) for v in out[cold])
    assert b > r + 40


@pytest.mark.parametrize(("alpha", "expected"), [(0.0, 128), (1.0, None)])
def test_overlay_heatmap_alpha(alpha, expected):
    frame = np.full((8, 8, 3), 128, np.uint8)
    heat = np.arange(4.0).reshape(2, 2)
    out = overlay_heatmap(frame, heat, alpha=alpha)
    if expected is not None:
        assert (out == expected).all()  # alpha 0: the frame untouched
    else:
        assert not (out == 128).all()  # alpha 1: pure colormap


@pytest.mark.parametrize(
    ("frame_shape", "heat_shape", "alpha", "message"),
    [
        ((8, 8), (2, 2), 0.5, "frame_rgb"),
        ((8, 8, 3), (0, 2), 0.5, "heat"),
        ((8, 8, 3), (2, 2, 1), 0.5, "heat"),
        ((8, 8, 3), (2, 2), 1.5, "alpha"),
    ],
)
def test_overlay_heatmap_rejects_bad_input(frame_shape, heat_shape, alpha, message):
    with pytest.raises(ValueError, match=message):
        overlay_heatmap(np.zeros(frame_shape, np.uint8), np.ones(heat_shape), alpha=alpha)
