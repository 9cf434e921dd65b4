"""Pictures of re-ID results: CMC curves and DRSTA attention grids, written as PNG files.

matplotlib is imported inside each function and every figure is drawn on its own Agg canvas, so importing
this module neither loads matplotlib nor touches the process-wide backend (a notebook keeps its own).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["overlay_heatmap", "plot_attention", "plot_cmc"]

_PANEL_WIDTH_IN = 1.25  # width of one image panel in the attention grid, inches
_DPI = 100


def _save(fig, out: Path | str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself to fig: PNG rendering by Agg, whatever pyplot's backend is
    fig.savefig(out, dpi=_DPI, format="png")
    return out


def plot_cmc(
    curves: dict[str, np.ndarray],
    out: Path | str,
    title: str = "CMC",
    *,
    max_rank: int | None = None,
) -> Path:
    """Draw one or more CMC curves and write them to ``out`` as PNG; return ``out`` as a ``Path``.

    ``curves`` maps a legend name to a CMC curve (R,) of fractions in ``[0, 1]``, ``curve[k - 1]`` being the
    value at rank ``k`` (e.g. :attr:`models.metrics.ReIDMetrics.cmc`). The legend shows each curve's
    rank-1. ``max_rank`` cuts every curve to its first ``max_rank`` ranks (``None``: whole curves); full
    curves of big galleries are long and the interesting part is the start.
    Raises ``ValueError`` when ``curves`` is empty or a curve is not a non-empty 1-D array in ``[0, 1]``.
    Creates ``out``'s parent directory if needed.
    """
    if not curves:
        raise ValueError("curves: expected at least one CMC curve, got an empty dict")
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank: expected >= 1 or None, got {max_rank}")
    checked: dict[str, np.ndarray] = {}
    for name, curve in curves.items():
        c = np.asarray(curve, dtype=np.float64)
        if c.ndim != 1 or c.size == 0:
            raise ValueError(f"curves[{name!r}]: expected a non-empty 1-D CMC curve, got shape {c.shape}")
        if not np.all((c >= 0.0) & (c <= 1.0)):  # also rejects NaN
            raise ValueError(f"curves[{name!r}]: expected fractions in [0, 1]")
        checked[name] = c[:max_rank]

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    longest = max(len(c) for c in checked.values())
    for name, c in checked.items():
        ranks = np.arange(1, len(c) + 1)
        marker = "o" if len(c) <= 30 else None  # markers help short curves, clutter long ones
        ax.plot(ranks, 100.0 * c, marker=marker, markersize=3, label=f"{name} (rank-1 {100.0 * c[0]:.1f}%)")
    ax.set_xlim(0.5, longest + 0.5)
    ax.set_ylim(0.0, 101.0)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, out)


def overlay_heatmap(frame_rgb: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured attention map over a frame: (H, W, 3) uint8, (h, w) -> (H, W, 3) uint8 RGB.

    ``heat`` is upsampled to (H, W) bilinearly and min-max scaled to ``[0, 1]`` within itself, so colours
    show where this map looks (red = most), not how peaked it is compared to others; a constant map is
    drawn at the middle of the colormap. ``alpha`` is the heatmap's weight in the blend.
    """
    import matplotlib

    frame = np.asarray(frame_rgb)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame_rgb: expected (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    h_img, w_img = frame.shape[:2]
    m = np.asarray(heat, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"heat: expected a non-empty (h, w) map, got {m.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    up = cv2.resize(m, (w_img, h_img), interpolation=cv2.INTER_LINEAR)  # dsize is (width, height)
    lo, hi = float(up.min()), float(up.max())
    norm = (up - lo) / (hi - lo) if hi - lo > 1e-12 else np.full_like(up, 0.5)
    colour = matplotlib.colormaps["jet"](norm)[..., :3] * 255.0  # (H, W, 4) RGBA in [0, 1] -> (H, W, 3)
    blend = (1.0 - alpha) * frame.astype(np.float32) + alpha * colour
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def plot_attention(
    frames_rgb: np.ndarray,
    spatial: np.ndarray,
    temporal: np.ndarray,
    out: Path | str,
    title: str = "",
) -> Path:
    """Grid of DRSTA spatial and temporal attention (like figure 3 of the paper); write PNG, return ``out``.

    ``frames_rgb`` (N, H, W, 3) uint8 RGB are the N sampled frames of one tracklet; ``spatial`` (N, K, h, w)
    the K spatial attention maps of each frame (each sums to 1 over its h*w cells); ``temporal`` (N, K)
    the temporal weights ``t_{n,k}`` (each column sums to 1 over the N frames). Row ``n`` shows frame ``n``,
    then K panels with map ``(n, k)`` overlaid by :func:`overlay_heatmap` and ``t_{n,k}`` written beneath;
    the frame a part weights most is labelled in bold. Columns are headed "part 1" .. "part K".
    Raises ``ValueError`` naming the offending argument on a shape, dtype or NaN problem, including N = 0
    and K = 0. Creates ``out``'s parent directory if needed.
    """
    frames = np.asarray(frames_rgb)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames_rgb: expected (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    n_frames, h_img, w_img = frames.shape[:3]
    if n_frames == 0 or h_img == 0 or w_img == 0:
        raise ValueError(f"frames_rgb: expected at least one non-empty frame, got {frames.shape}")
    maps = np.asarray(spatial, dtype=np.float64)
    if maps.ndim != 4 or maps.shape[0] != n_frames or 0 in maps.shape:
        raise ValueError(f"spatial: expected ({n_frames}, K, h, w) with K, h, w >= 1, got {maps.shape}")
    n_parts = maps.shape[1]
    weights = np.asarray(temporal, dtype=np.float64)
    if weights.shape != (n_frames, n_parts):
        raise ValueError(
            f"temporal: expected ({n_frames}, {n_parts}) to match spatial (N, K), got {weights.shape}"
        )
    if not np.isfinite(maps).all():
        raise ValueError("spatial: contains NaN or inf")
    if not np.isfinite(weights).all():
        raise ValueError("temporal: contains NaN or inf")

    from matplotlib.figure import Figure

    # Panels keep the frames' aspect; person crops are tall, so clamp to keep the figure a sane size.
    panel_h = _PANEL_WIDTH_IN * float(np.clip(h_img / w_img, 0.5, 3.0))
    fig = Figure(
        figsize=((n_parts + 1) * _PANEL_WIDTH_IN + 0.4, n_frames * (panel_h + 0.3) + (0.8 if title else 0.4)),
        layout="constrained",
    )
    axes = fig.subplots(n_frames, n_parts + 1, squeeze=False)
    best_frame = weights.argmax(axis=0)  # (K,) frame each part trusts most
    for n in range(n_frames):
        ax = axes[n, 0]
        ax.imshow(frames[n])
        ax.set_ylabel(f"frame {n}", fontsize=9)
        for k in range(n_parts):
            ax = axes[n, k + 1]
            ax.imshow(overlay_heatmap(frames[n], maps[n, k], alpha=0.5))
            bold = "bold" if best_frame[k] == n else "normal"
            ax.set_xlabel(f"t = {weights[n, k]:.2f}", fontsize=9, fontweight=bold)
    axes[0, 0].set_title("frame", fontsize=10)
    for k in range(n_parts):
        axes[0, k + 1].set_title(f"part {k + 1}", fontsize=10)
    for ax in axes.flat:  # ticks off but labels kept (axis("off") would hide the weights too)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, out)
