"""Saving and loading DRSTA checkpoints.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with ``torch.load(...,
weights_only=True)``: a ``.pt`` file from a stranger cannot run code here.

Layout (``format`` = ``drsta-checkpoint/1``)::

    {"format": str, "config": dict (DRSTAConfig fields), "head": state_dict without the backbone,
     "backbone": state_dict or absent, "backbone_weights": {"source": str, "sha256": str} or absent,
     "meta": dict (dataset, split, metrics...), "train_state": dict (optimiser, epoch...) or absent}

``meta["threshold"]`` is the matching threshold on raw cosines (:func:`checkpoint_threshold`);
``meta["centering"]`` the camera-centering prior and the threshold on centred cosines
(:func:`checkpoint_centering`).

The project's default checkpoint holds the head only: the backbone weights are third-party and stay in
``../shared`` (or are downloaded from their official URL with a sha256 check).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.backbones import build_backbone
from models.drsta import DRSTA, AvgPoolReID, DRSTAConfig

FORMAT = "drsta-checkpoint/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "models" / "checkpoints" / "drsta_openvino_0277_pku.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, not ours, or built for another architecture."""


def save_checkpoint(
    path: str | Path,
    model: DRSTA,
    *,
    include_backbone: bool,
    backbone_weights: dict[str, str] | None = None,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    head_dtype: torch.dtype | None = None,
) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a half-written checkpoint.

    head_dtype: store the head's floating-point tensors in this dtype (e.g. ``torch.float16`` to halve a
    committed file); loading casts them back to the model's dtype.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "config": {k: v for k, v in vars(model.cfg).items()},
        "head": {
            k: v.detach().cpu().to(head_dtype)
            if head_dtype is not None and v.is_floating_point()
            else v.detach().cpu()
            for k, v in model.head_state_dict().items()
        },
        "meta": meta or {},
    }
    if include_backbone:
        payload["backbone"] = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    if backbone_weights:
        payload["backbone_weights"] = dict(backbone_weights)
    if train_state is not None:
        payload["train_state"] = train_state
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check the layout; raise CheckpointError with a one-line reason naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for pickles that need code or corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused or unreadable with weights_only=True (a checkpoint must hold only tensors and "
            f"plain data): {first}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a DRSTA checkpoint (format {got!r}, expected {FORMAT!r})")
    return payload


def network_digest(path: str | Path) -> str:
    """sha256 (hex) of what makes a checkpoint's embeddings: everything in it but ``meta`` (the network config,
    the head's tensors, the backbone and its weights reference). Recalibrating a checkpoint's thresholds or
    adding notes to ``meta`` keeps it, so stores keep comparing their embeddings with the new ones. Raises
    CheckpointError as :func:`read_checkpoint` does."""
    payload = read_checkpoint(path)
    h = hashlib.sha256()

    def feed(key: str, value: Any) -> None:
        h.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                feed(f"{key}/{k}", value[k])
        else:
            h.update(json.dumps(value, sort_keys=True, default=str).encode())

    for key in sorted(k for k in payload if k != "meta"):
        feed(key, payload[key])
    return h.hexdigest()


def model_name(path: str | Path) -> str:
    """The name stored with every embedding, ``"<checkpoint stem>@<first 12 of network_digest>"``: embeddings
    are compared only when they come from the same model."""
    path = Path(path)
    return f"{path.stem}@{network_digest(path)[:12]}"


def build_model_from_checkpoint(
    payload: dict[str, Any],
    *,
    path: str | Path = "<checkpoint>",
    backbone_weights: str | Path | None = None,
) -> DRSTA:
    """Rebuild DRSTA from a checkpoint dict. The backbone comes from the checkpoint when it holds one,
    else from ``backbone_weights`` (path or URL), else from the source recorded in the checkpoint."""
    try:
        cfg = DRSTAConfig.from_dict(dict(payload["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad config in checkpoint: {exc}") from None
    if "backbone" in payload:
        backbone = build_backbone(cfg.backbone, pretrained=False)
        _load_strict(backbone, payload["backbone"], path, "backbone")
    else:
        recorded = payload.get("backbone_weights", {})
        source = backbone_weights or recorded.get("source")
        sha = None if backbone_weights else recorded.get("sha256")
        if source is None:
            raise CheckpointError(
                f"{path}: holds no backbone; pass the backbone weights (--backbone-weights PATH)"
            )
        backbone = build_backbone(cfg.backbone, weights=source, weights_sha256=sha, pretrained=True)
    model = DRSTA(cfg, backbone=backbone)
    head = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    _check_keys(head, payload["head"], path, "head")
    model.load_state_dict(
        {**payload["head"], **{f"backbone.{k}": v for k, v in backbone.state_dict().items()}}
    )
    return model.eval()


def _check_keys(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], path, part: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))
    if missing or unexpected or wrong:
        bits = []
        if missing:
            bits.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            bits.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            bits.append(f"shape of {k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}")
        raise CheckpointError(
            f"{path}: {part} does not match the architecture in its config: {'; '.join(bits)}"
        )


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path, part: str) -> None:
    _check_keys(module.state_dict(), state, path, part)
    module.load_state_dict(state)


def load_drsta(
    checkpoint: str | Path | None = None,
    *,
    backbone_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> DRSTA:
    """Load a DRSTA checkpoint (the project's default one when ``checkpoint`` is None) onto ``device``.

    For the default checkpoint the backbone weights are looked for at ``backbone_weights``, then at the
    path recorded in it, then at ``../shared/assets/reid/osnet_x0_25/`` next to this repository.
    """
    path = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    payload = read_checkpoint(path)
    if backbone_weights is None and "backbone" not in payload:
        recorded = payload.get("backbone_weights", {}).get("source")
        if recorded and not Path(recorded).is_absolute():
            # recorded relative to the repository root, where the default checkpoint lives
            from models.samples import resolve_sample

            backbone_weights = resolve_sample(REPO_ROOT / recorded)  # ../shared, else its public source
    return build_model_from_checkpoint(payload, path=path, backbone_weights=backbone_weights).to(device)


def checkpoint_threshold(path: str | Path | None = None) -> float | None:
    """The matching threshold (cosine) calibrated for this checkpoint, or None when it records none.

    ``path`` None means the default checkpoint. The operating point it stands for is in
    ``read_checkpoint(path)["meta"]["operating_point"]`` (see ``models.calibrate``). Raises CheckpointError
    as :func:`read_checkpoint` does.
    """
    meta = read_checkpoint(DEFAULT_CHECKPOINT if path is None else path).get("meta", {})
    value = meta.get("threshold")
    return None if value is None else float(value)


@dataclass(frozen=True)
class CheckpointCentering:
    """What a checkpoint records for camera centering (``pipeline.matching.centering``): the prior mean
    embedding, its weight in tracklets, and the matching threshold on the centred cosine scale with the
    operating point it stands for on the validation pairs (``models.calibrate``; no ``threshold`` key)."""

    prior: np.ndarray  # (E,) float64
    prior_weight: float
    threshold: float
    operating_point: dict[str, Any]


def checkpoint_centering(path: str | Path | None = None) -> CheckpointCentering | None:
    """The camera-centering record of this checkpoint (``meta["centering"]``), or None when it has none.

    ``path`` None means the default checkpoint. Raises CheckpointError as :func:`read_checkpoint` does, and
    with a one-line message naming the file and the field when the record is malformed.
    """
    path = DEFAULT_CHECKPOINT if path is None else Path(path)
    meta = read_checkpoint(path).get("meta", {})
    rec = meta.get("centering") if isinstance(meta, dict) else None
    if rec is None:
        return None

    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: meta centering.{field}: {why}")

    if not isinstance(rec, dict):
        raise CheckpointError(f"{path}: meta centering: expected a dict, got {type(rec).__name__}")
    for field in ("prior", "prior_weight", "threshold", "operating_point"):
        if field not in rec:
            raise bad(field, "missing")
    raw = rec["prior"]
    if not isinstance(raw, (list, tuple, torch.Tensor)) or (
        isinstance(raw, (list, tuple)) and not all(_is_number(x) for x in raw)
    ):
        raise bad("prior", f"expected a list of numbers, got {type(raw).__name__}")
    prior = raw.detach().double().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw, np.float64)
    if prior.ndim != 1 or prior.size == 0:
        raise bad("prior", f"expected a non-empty vector, got shape {prior.shape}")
    if not np.all(np.isfinite(prior)):
        raise bad("prior", "holds non-finite values")
    weight, threshold = rec["prior_weight"], rec["threshold"]
    if not _is_number(weight) or not math.isfinite(weight) or weight <= 0:
        raise bad("prior_weight", f"expected a finite number > 0, got {weight!r}")
    if not _is_number(threshold) or not math.isfinite(threshold):
        raise bad("threshold", f"expected a finite number, got {threshold!r}")
    point = rec["operating_point"]
    if not isinstance(point, dict):
        raise bad("operating_point", f"expected a dict, got {type(point).__name__}")
    return CheckpointCentering(
        prior=prior, prior_weight=float(weight), threshold=float(threshold), operating_point=dict(point)
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_avgpool_baseline(
    backbone: str,
    backbone_weights: str | Path | None,
    *,
    num_frames: int = 6,
    pool: str = "grid",
    device: str | torch.device = "cpu",
) -> AvgPoolReID:
    """The average-pooling baseline on a pretrained backbone (no checkpoint of ours involved)."""
    net = build_backbone(backbone, weights=backbone_weights, pretrained=True)
    return AvgPoolReID(net, num_frames=num_frames, pool=pool).to(device).eval()


def resolve_device(device: str | None) -> torch.device:
    """ "auto" (or None) -> CUDA when present, else CPU; anything else is passed to torch.device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available on this machine")
    return dev


__all__ = [
    "CheckpointCentering",
    "CheckpointError",
    "DEFAULT_CHECKPOINT",
    "build_model_from_checkpoint",
    "checkpoint_centering",
    "checkpoint_threshold",
    "load_avgpool_baseline",
    "load_drsta",
    "read_checkpoint",
    "resolve_device",
    "save_checkpoint",
]
