"""Diversity Regularized Spatiotemporal Attention (Li, Bak, Carr, Wang; CVPR 2018).

One file, one network. Equation numbers refer to the paper (section 3) and, prefixed "S", to its
supplementary (feature enhancement, section 3.2.1). Full text: ``../shared/papers/drsta_cvpr2018_full_text.md``.

Choices where the paper is silent or ambiguous are documented in ``docs/drsta.md``; the two that change
numbers are:

* Eq. 12 prints ``t = e / Σ e`` while the text calls it a softmax; raw linear responses can be negative, so a
  plain ratio is not a distribution. We use the softmax over the N frames.
* Eq. S1 ``Φ_k = X_kᵀ X_k`` on 2048-d features gives logits in the thousands and a one-hot row softmax. We
  scale Φ by ``1/sqrt(D)`` (``enhance_scale``; set it to 1.0 for the literal equation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import INPUT_SIZE, OwnHead, build_backbone, preprocess_crops

TEMPORAL_POOLING = ("attention", "avg", "max")
HEAD_STARTS = ("paper", "own")


@dataclass(frozen=True)
class DRSTAConfig:
    """Everything that shapes the network; stored inside every checkpoint."""

    backbone: str = "resnet50"
    num_parts: int = 6  # K spatial attention models
    num_frames: int = 6  # N frames per tracklet (restricted random sampling)
    attn_hidden: int = 256  # d, hidden size of each spatial attention model (Eq. 1)
    embed_dim: int = 128  # size of the final L2-normalised embedding
    spatial_attention: bool = True  # False: one uniform "attention" = spatial average pooling
    enhancement: bool = True  # feature enhancement E (Eq. 4, supplementary Eq. S1-S4)
    enhance_sigma: float = 1.0  # σ of the temporal similarity Ψ (Eq. S2)
    enhance_scale: float | None = None  # scale of Φ (Eq. S1); None = 1/sqrt(D)
    temporal_pooling: str = "attention"  # "attention" (Eq. 11-13), "avg" or "max" (table 1 ablations)
    dropout: float = 0.0  # dropout on the concatenated part features before the FC
    bn_neck: bool = False  # batch-norm the concatenated part features before the FC (not in the paper)
    # "paper": random attention, FC to embed_dim after temporal pooling. "own": the head starts as the
    # backbone's own embedding mean-pooled over frames (the honest baseline) and projects every frame with
    # the backbone's own layers; embed_dim must be the backbone's embedding size. See docs/drsta.md.
    start: str = "paper"

    def __post_init__(self) -> None:
        if self.start not in HEAD_STARTS:
            raise ValueError(f"start: expected one of {HEAD_STARTS}, got {self.start!r}")
        if self.start == "own" and self.bn_neck:
            raise ValueError("bn_neck: must be false with start='own' (the own projection has its own)")
        if self.temporal_pooling not in TEMPORAL_POOLING:
            raise ValueError(
                f"temporal_pooling: expected one of {TEMPORAL_POOLING}, got {self.temporal_pooling!r}"
            )
        for name in ("num_parts", "num_frames", "attn_hidden", "embed_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not self.spatial_attention and self.num_parts != 1:
            raise ValueError(
                "num_parts: spatial_attention=False pools the whole grid, so num_parts must be 1"
            )

    @classmethod
    def from_dict(cls, d: dict) -> DRSTAConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DRSTAConfig: unknown keys {unknown} (valid: {sorted(known)})")
        return cls(**d)


@dataclass
class ReIDOutput:
    """What the network gives for a batch of B tracklets of N frames each.

    embeddings: (B, embed_dim), unit L2 norm.
    spatial_attention: (B, N, K, L) receptive fields s_{n,k,l}; each (b, n, k) row sums to 1 over L.
    temporal_attention: (B, N, K) weights t_{n,k}; each (b, k) column sums to 1 over N.
    grid_size: (h, w) of the feature grid, L = h*w, row-major, for drawing the attention as pictures.
    """

    embeddings: torch.Tensor
    spatial_attention: torch.Tensor
    temporal_attention: torch.Tensor
    grid_size: tuple[int, int] = field(default=(0, 0))


class Embedder(nn.Module):
    """Base of every re-ID network here: ``embed`` is inference, whatever mode the module is in.

    ``preprocess`` turns BGR uint8 crops into this network's input (its backbone's ``input_size``): callers
    use it rather than a fixed size, so a backbone with another input size needs no caller change.
    """

    backbone: nn.Module

    def preprocess(self, crops_bgr_uint8) -> torch.Tensor:
        """BGR uint8 crops ((T, h, w, 3) array or a sequence of (h_i, w_i, 3)) -> (T, 3, H, W) input."""
        return preprocess_crops(crops_bgr_uint8, size=getattr(self.backbone, "input_size", INPUT_SIZE))

    @torch.no_grad()
    def embed(self, frames: torch.Tensor) -> ReIDOutput:
        was_training = self.training
        self.eval()
        try:
            return self(frames)
        finally:
            self.train(was_training)


class SpatialAttention(nn.Module):
    """K spatial attention models over the L grid cells (Eq. 1-3).

    All K first layers W_{s,k} (d x D) are one Linear(D, K*d); the second layers w'_{s,k} are a (K, d) weight
    applied part by part, so the K models stay independent while running as two matrix products.
    """

    def __init__(self, in_dim: int, num_parts: int, hidden: int, *, uniform: bool = False):
        super().__init__()
        self.num_parts, self.hidden = num_parts, hidden
        self.w1 = nn.Linear(in_dim, num_parts * hidden)  # W_{s,k}, b_{s,k} for all k
        self.w2 = nn.Parameter(torch.empty(num_parts, hidden))  # w'_{s,k}
        self.b2 = nn.Parameter(torch.zeros(num_parts))  # b'_{s,k}
        if uniform:  # zero logits: every part starts as the spatial mean (W1 stays random to break symmetry)
            nn.init.zeros_(self.w2)
        else:
            nn.init.normal_(self.w2, std=1.0 / math.sqrt(hidden))

    def forward(
        self, f: torch.Tensor, values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f: (M, L, D) cell features -> gated features x (M, K, D) and attention s (M, K, L).

        values: (M, L, D) what the attention gates (default ``f``); the scores always come from ``f``.
        """
        m, cells, _ = f.shape
        h = F.relu(self.w1(f))  # (M, L, K*d)
        h = h.view(m, cells, self.num_parts, self.hidden)  # (M, L, K*d) -> (M, L, K, d)
        e = torch.einsum("mlkd,kd->mkl", h, self.w2) + self.b2[None, :, None]  # Eq. 1: (M, K, L)
        s = e.softmax(dim=-1)  # Eq. 2: softmax over the L cells
        x = torch.bmm(s, f if values is None else values)  # Eq. 3: (M, K, L) @ (M, L, D) -> (M, K, D)
        return x, s


class FeatureEnhancement(nn.Module):
    """Temporal feature enhancement E (supplementary Eq. S1-S4).

    For each part k, frame i gathers the same part from every frame j with weight C_k[i, j] =
    softmax_j(Φ_k[i, j] + Ψ[i, j]); the gathered feature goes through a linear map (the "FCN", shared by the K
    parts) and is added back: X̂_k = FCN(X_k C_kᵀ) + X_k in our row convention.
    """

    def __init__(self, dim: int, num_frames: int, sigma: float, scale: float | None):
        super().__init__()
        self.num_frames = num_frames
        self.scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
        idx = torch.arange(num_frames, dtype=torch.float32)
        dist = (idx[:, None] - idx[None, :]).abs()  # |i - j|, (N, N)
        self.register_buffer("temporal_kernel", torch.exp(-dist / sigma), persistent=False)
        self.psi_w = nn.Parameter(torch.ones(num_frames, num_frames))  # W of Eq. S2 (element-wise)
        self.psi_b = nn.Parameter(torch.zeros(num_frames))  # b of Eq. S2
        self.fcn = nn.Linear(dim, dim)
        nn.init.zeros_(self.fcn.weight)  # starts as the identity map of the residual (X̂ = X)
        nn.init.zeros_(self.fcn.bias)

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, K, D) -> row-stochastic C: (B, K, N, N), C[b, k, i, :] sums to 1."""
        xk = x.permute(0, 2, 1, 3)  # (B, N, K, D) -> (B, K, N, D)
        phi = torch.matmul(xk, xk.transpose(-1, -2)) * self.scale  # Eq. S1: Φ_k = X_kᵀ X_k, (B, K, N, N)
        psi = self.psi_w * self.temporal_kernel + self.psi_b[None, :]  # Eq. S2: Ψ, (N, N)
        return (phi + psi).softmax(dim=-1)  # Eq. S3: row softmax

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, K, D) -> enhanced x̂ (B, N, K, D) and C (B, K, N, N)."""
        c = self.similarity(x)
        xk = x.permute(0, 2, 1, 3)  # (B, N, K, D) -> (B, K, N, D)
        pooled = torch.matmul(c, xk)  # row i = Σ_j C[i, j] x_j, (B, K, N, D)
        enhanced = self.fcn(pooled) + xk  # Eq. S4: residual FCN
        return enhanced.permute(0, 2, 1, 3), c  # (B, K, N, D) -> (B, N, K, D)


class TemporalAttention(nn.Module):
    """Per-part temporal attention (Eq. 11-13): one linear scorer per part, normalised over the N frames."""

    def __init__(self, dim: int, num_parts: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(num_parts, dim))  # w_{t,k}; zero = uniform weights at start
        self.b = nn.Parameter(torch.zeros(num_parts))  # b_{t,k}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, K, D) -> pooled (B, K, D) and weights t (B, N, K)."""
        e = torch.einsum("bnkd,kd->bnk", x, self.w) + self.b  # Eq. 11
        t = e.softmax(dim=1)  # Eq. 12, as a softmax over N (see module docstring)
        return torch.einsum("bnk,bnkd->bkd", t, x), t  # Eq. 13


class OwnStart(nn.Module):
    """The backbone's own layers after its last map, trainable, so the head starts at the honest baseline.

    ``weigh_cells`` multiplies every cell by the backbone's learned per-channel pooling weights (OMZ models:
    the depthwise global pooling kernel; plain average pooling: 1), so uniform spatial attention reproduces
    the backbone's pooling; ``pool_bias`` is added after gating. ``init_fc`` copies the backbone's projection
    into the K-part FC (each part's block is the projection divided by K: identical parts give the
    projection of that part), ``act`` is its PReLU (slope 0 for a ReLU, 1 for none).
    """

    def __init__(self, own: OwnHead, num_parts: int, embed_dim: int):
        super().__init__()
        if own.embed_dim != embed_dim:
            raise ValueError(
                f"embed_dim: start='own' needs the backbone's embedding size {own.embed_dim}, got {embed_dim}"
            )
        self.num_parts = num_parts
        self.pool_weight = nn.Parameter(own.pool_weight.clone())  # (D, h, w) or (D, 1, 1)
        self.pool_bias = nn.Parameter(own.pool_bias.clone())  # (D,)
        self.act = nn.PReLU(num_parameters=1, init=float(own.slope))

    def weigh_cells(self, f: torch.Tensor) -> torch.Tensor:
        """f: (M, L, D) -> (M, L, D) cells times their pooling weights (broadcast when per-channel only)."""
        w = self.pool_weight.flatten(1).transpose(0, 1)  # (D, h, w) -> (D, L) -> (L, D)
        if w.shape[0] not in (1, f.shape[1]):
            raise ValueError(f"grid: pooling weights cover {w.shape[0]} cells, the map has {f.shape[1]}")
        return f * w

    @torch.no_grad()
    def init_fc(self, fc: nn.Linear, own: OwnHead) -> None:
        fc.weight.copy_((own.proj_weight / self.num_parts).repeat(1, self.num_parts))  # (E, D) -> (E, K*D)
        fc.bias.copy_(own.proj_bias)


class DRSTA(Embedder):
    """The full network: backbone grid -> K spatial attentions -> enhancement -> temporal pooling -> 128-d.

    Input (B, N, 3, H, W) ImageNet-normalised RGB (H, W = 256, 128 in the paper). ``forward`` and ``embed``
    both return a :class:`ReIDOutput`; ``embed`` runs without gradients in eval mode and restores the mode.
    """

    def __init__(self, cfg: DRSTAConfig, backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone if backbone is not None else build_backbone(cfg.backbone, pretrained=False)
        dim = int(self.backbone.out_channels)
        self.dim = dim
        k = cfg.num_parts
        own = cfg.start == "own"
        self.spatial = (
            SpatialAttention(dim, k, cfg.attn_hidden, uniform=own) if cfg.spatial_attention else None
        )
        self.enhance = (
            FeatureEnhancement(dim, cfg.num_frames, cfg.enhance_sigma, cfg.enhance_scale)
            if cfg.enhancement
            else None
        )
        self.temporal = TemporalAttention(dim, k) if cfg.temporal_pooling == "attention" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.neck = nn.BatchNorm1d(k * dim) if cfg.bn_neck else nn.Identity()
        self.fc = nn.Linear(k * dim, cfg.embed_dim)  # concatenated parts (Eq. 15) -> embedding
        self.own = None
        if own:
            own_head = self.backbone.own_head()
            self.own = OwnStart(own_head, k, cfg.embed_dim)
            self.own.init_fc(self.fc, own_head)

    @property
    def num_frames(self) -> int:
        return self.cfg.num_frames

    def head_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter that is not the backbone's (what the default checkpoint stores)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone_ids]

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def forward_features(self, grid: torch.Tensor, num_frames: int) -> ReIDOutput:
        """grid: (B*N, D, h, w) backbone features -> ReIDOutput. Split out so cached features can train."""
        bn, d, gh, gw = grid.shape
        if bn % num_frames:
            raise ValueError(f"grid: batch {bn} is not a multiple of num_frames={num_frames}")
        b = bn // num_frames
        f = grid.flatten(2).transpose(1, 2)  # (B*N, D, h, w) -> (B*N, L, D)
        values = f if self.own is None else self.own.weigh_cells(f)  # own start: the learned pooling weights
        if self.spatial is not None:
            x, s = self.spatial(f, values)  # (B*N, K, D), (B*N, K, L)
        else:
            s = f.new_full((bn, 1, gh * gw), 1.0 / (gh * gw))  # uniform attention = average pooling
            x = torch.bmm(s, values)
        if self.own is not None:
            x = x + self.own.pool_bias  # attention rows sum to 1: the same as adding it to every cell
        k = x.shape[1]
        x = x.view(b, num_frames, k, d)  # (B*N, K, D) -> (B, N, K, D)
        s = s.view(b, num_frames, k, gh * gw)  # (B*N, K, L) -> (B, N, K, L)
        if self.enhance is not None:
            if num_frames != self.cfg.num_frames:
                raise ValueError(
                    f"input: enhancement was built for N={self.cfg.num_frames} frames, got {num_frames}"
                )
            x, _ = self.enhance(x)
        if self.own is not None:
            return self._project_frames(x, s, (gh, gw))
        if self.temporal is not None:
            pooled, t = self.temporal(x)  # (B, K, D), (B, N, K)
        elif self.cfg.temporal_pooling == "max":
            pooled = x.max(dim=1).values
            t = (x == pooled[:, None]).float().mean(-1)  # share of channels each frame won, for display
            t = t / t.sum(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            pooled = x.mean(dim=1)
            t = x.new_full((b, num_frames, k), 1.0 / num_frames)
        z = self.dropout(self.neck(pooled.reshape(b, k * d)))  # Eq. 15: (B, K, D) -> (B, K*D)
        emb = F.normalize(self.fc(z), dim=1)
        return ReIDOutput(emb, s, t, (gh, gw))

    def _project_frames(self, x: torch.Tensor, s: torch.Tensor, grid_size: tuple[int, int]) -> ReIDOutput:
        """Own start: project every frame with the backbone's own layers, then pool over the N frames.

        x: (B, N, K, D). Frame n's weight is the mean over the K parts of the temporal attention t_{n,k}
        (Eq. 11-12); with zero temporal weights it is 1/N, so the untrained head is exactly the backbone's
        own embedding mean-pooled over the tracklet.
        """
        b, n, k, d = x.shape
        y = self.own.act(self.fc(self.dropout(x.reshape(b, n, k * d))))  # (B, N, K*D) -> (B, N, E)
        if self.temporal is not None:
            _, t = self.temporal(x)  # (B, N, K)
            pooled = torch.einsum("bn,bne->be", t.mean(dim=2), y)
        elif self.cfg.temporal_pooling == "max":
            pooled = y.max(dim=1).values
            t = (y == pooled[:, None]).float().mean(-1, keepdim=True).expand(b, n, k)
            t = t / t.sum(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            pooled = y.mean(dim=1)
            t = x.new_full((b, n, k), 1.0 / n)
        return ReIDOutput(F.normalize(pooled, dim=1), s, t, grid_size)

    def forward(self, frames: torch.Tensor) -> ReIDOutput:
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames: expected (B, N, 3, H, W), got {tuple(frames.shape)}")
        b, n = frames.shape[:2]
        grid = self.backbone(frames.flatten(0, 1))  # (B, N, 3, H, W) -> (B*N, 3, H, W) -> (B*N, D, h, w)
        return self.forward_features(grid, n)


class AvgPoolReID(Embedder):
    """The baselines: the same backbone, no attention, temporal average pooling, L2-normalised; no training.

    ``pool="embedding"`` is the honest baseline for a DRSTA head: the backbone's own per-image embedding
    (``Backbone.image_embedding``: OSNet's 512-d head, an OMZ model's 256-d output) averaged over the
    frames, then L2-normalised. ``pool="grid"`` averages the feature grid DRSTA sees (D dimensions), which is
    not what anyone would deploy and is kept only to show what the raw map is worth. Attention
    outputs are uniform, so callers can treat it like :class:`DRSTA`.
    """

    POOLS = ("grid", "embedding")

    def __init__(self, backbone: nn.Module, num_frames: int = 6, pool: str = "grid"):
        super().__init__()
        if pool not in self.POOLS:
            raise ValueError(f"pool: expected one of {self.POOLS}, got {pool!r}")
        self.backbone = backbone
        self.num_frames = num_frames  # frames sampled per tracklet by callers (restricted random sampling)
        self.pool = pool

    def forward(self, frames: torch.Tensor) -> ReIDOutput:
        b, n = frames.shape[:2]
        x = frames.flatten(0, 1)  # (B, N, 3, H, W) -> (B*N, 3, H, W)
        if self.pool == "grid":
            grid = self.backbone(x)  # (B*N, D, h, w)
            per_frame = grid.mean(dim=(2, 3))
        else:
            grid, per_frame = self.backbone.features_and_embedding(x)  # one backbone pass for both
        gh, gw = grid.shape[2:]
        emb = F.normalize(per_frame.view(b, n, -1).mean(dim=1), dim=1)  # (B*N, E) -> (B, N, E) -> (B, E)
        s = grid.new_full((b, n, 1, gh * gw), 1.0 / (gh * gw))
        t = grid.new_full((b, n, 1), 1.0 / n)
        return ReIDOutput(emb, s, t, (gh, gw))
