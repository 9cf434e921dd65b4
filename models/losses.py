"""Losses for DRSTA: the diversity regularisers (Eq. 9, 10), OIM (Xiao et al., CVPR 2017) and softmax.

Reduction choice for the regularisers (``docs/drsta.md``): Q is computed per frame, i.e. per attention
matrix S_n (K x L), and averaged over all frames of the batch. The authors' released code summed the squared
Frobenius terms over the batch and took a square root; the mean per frame keeps the paper's definition
(Eq. 9) and makes the coefficient independent of batch size and N.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

REGULARIZERS = ("none", "hellinger", "sparse")


def diversity_hellinger(s: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Q = ‖√S √Sᵀ − I‖²_F (Eq. 9), averaged over frames.

    s: (..., K, L) attention with each row a probability mass function. Returns a scalar tensor.
    0 for disjoint receptive fields, K(K−1) when all K are identical.
    """
    r = s.clamp_min(eps).sqrt()
    return _gram_penalty(r)


def diversity_sparse(s: torch.Tensor) -> torch.Tensor:
    """Q′ = ‖S Sᵀ − I‖²_F (Eq. 10, the text-embedding variant kept for the ablation), averaged over frames."""
    return _gram_penalty(s)


def _gram_penalty(r: torch.Tensor) -> torch.Tensor:
    k = r.shape[-2]
    r = r.reshape(-1, k, r.shape[-1])  # (..., K, L) -> (M, K, L)
    gram = torch.bmm(r, r.transpose(1, 2))  # (M, K, K)
    eye = torch.eye(k, device=r.device, dtype=r.dtype)
    return ((gram - eye) ** 2).sum(dim=(1, 2)).mean()


def diversity_penalty(name: str, s: torch.Tensor) -> torch.Tensor:
    """Dispatch by config name: "none", "hellinger" (Q) or "sparse" (Q′)."""
    if name == "hellinger":
        return diversity_hellinger(s)
    if name == "sparse":
        return diversity_sparse(s)
    if name == "none":
        return s.new_zeros(())
    raise KeyError(f"unknown regularizer {name!r}; valid: {', '.join(REGULARIZERS)}")


class OIMLoss(nn.Module):
    """Online Instance Matching loss.

    A lookup table (num_classes x dim) holds one L2-normalised feature per labelled identity; a circular
    queue (queue_size x dim) holds features of recent unlabelled samples (target -1) as extra negatives.
    Logits are cosine similarities to both divided by ``temperature``; the loss is cross-entropy over the
    labelled samples. After computing the loss (in training mode) the table rows of the batch's identities
    are updated: v ← normalize(momentum·v + (1−momentum)·x), and unlabelled features enter the queue.
    Table and queue are buffers, saved in the state dict, never trained by the optimiser.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        *,
        queue_size: int = 0,
        momentum: float = 0.5,
        temperature: float = 0.1,
    ):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected [0, 1), got {momentum}")
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("lut", torch.zeros(num_classes, dim))
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, dim) L2-normalised -> (B, num_classes + queue_size) scaled similarities."""
        memory = torch.cat([self.lut, self.queue])  # a copy: update() may change the buffers before backward
        return x @ memory.t() / self.temperature

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        labelled = targets >= 0
        if labelled.any():
            loss = F.cross_entropy(logits[labelled], targets[labelled])
        else:
            loss = logits.sum() * 0.0
        if self.training:
            self.update(x.detach(), targets)
        return loss

    @torch.no_grad()
    def update(self, x: torch.Tensor, targets: torch.Tensor) -> None:
        for feat, y in zip(x, targets.tolist(), strict=True):
            if y >= 0:
                v = self.momentum * self.lut[y] + (1.0 - self.momentum) * feat
                self.lut[y] = F.normalize(v, dim=0)
            elif self.queue.shape[0]:
                self.queue[int(self.queue_ptr)] = feat
                self.queue_ptr.fill_((int(self.queue_ptr) + 1) % self.queue.shape[0])


class SoftmaxLoss(nn.Module):
    """Softmax cross-entropy over a linear classifier on the embedding (the paper's alternative)."""

    def __init__(self, dim: int, num_classes: int, *, scale: float = 16.0):
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # cosine classifier: embeddings are unit norm, so normalising the weights keeps logits bounded
        logits = F.linear(x, F.normalize(self.classifier.weight, dim=1)) * self.scale
        return F.cross_entropy(logits, targets)


LOSSES = {"oim": OIMLoss, "softmax": SoftmaxLoss}


def build_id_loss(name: str, dim: int, num_classes: int, **kwargs) -> nn.Module:
    try:
        cls = LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None
    return cls(dim, num_classes, **kwargs)
