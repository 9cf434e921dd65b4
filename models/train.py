"""Train DRSTA with the paper's staged schedule.

    python -m models.train --config configs/drsta_pku_osnet.yaml [--set key=value ...] [--resume]

Stages (paper section 4.2): each stage names the parts of the network it trains; the others are frozen.
The paper's schedule after backbone pre-training is: spatial attention + FC with the backbone frozen and
average temporal pooling (our temporal attention starts at zero weights, which *is* average pooling, and the
enhancement's FCN starts at zero, which is the identity), then every part but the backbone jointly, then
optionally everything. SGD, learning rate 0.1 then 0.01 within each stage.

When no stage trains the backbone, backbone features of every image (and its mirror image) are computed once
and cached: the head then trains in seconds on a CPU.

Writes to ``out_dir``: ``last.pt`` (full state, for ``--resume``), ``best.pt``, ``log.jsonl`` and ``log.csv``
(one row per epoch), ``final.json`` (the final evaluation).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.config_loader import (
    ConfigError,
    Section,
    check_between,
    check_choice,
    check_device,
    check_min,
    from_mapping,
    load_yaml,
    need,
    show,
    to_plain,
)
from models.backbones import build_backbone, preprocess_crops
from models.checkpoint import read_checkpoint, resolve_device, save_checkpoint
from models.datasets import (
    DATASETS,
    PKSampler,
    TrackletDataset,
    TrackletRecord,
    get_reader,
    read_image_bgr,
    split_ids,
)
from models.drsta import DRSTA, AvgPoolReID, DRSTAConfig
from models.losses import LOSSES, REGULARIZERS, build_id_loss, diversity_penalty
from models.metrics import ReIDMetrics, evaluate_rank
from models.runtime import configure_torch
from models.sampling import restricted_random_sample
from models.weights import sha256_file

PARTS = ("backbone", "spatial", "enhance", "temporal", "fc")


@dataclass(frozen=True, kw_only=True, repr=False)
class StageConfig(Section):
    """One training stage: ``epochs`` of SGD at ``lr`` (times ``lr_gamma`` from epoch ``lr_step`` of the
    stage on, ``None``: never), training the parts named in ``train`` (of :data:`PARTS`); the others are
    frozen."""

    name: str
    epochs: int
    lr: float = 0.1
    lr_step: int | None = None
    lr_gamma: float = 0.1
    train: tuple[str, ...] = ("spatial", "enhance", "temporal", "fc")

    def _check(self) -> None:
        need(bool(self.name.strip()), "name", "must not be empty")
        check_min(self, "epochs", 1)
        check_min(self, "lr", 0, strict=True)
        check_min(self, "lr_step", 1)
        check_min(self, "lr_gamma", 0, strict=True)
        need(len(self.train) > 0, "train", f"needs at least one part of {', '.join(PARTS)}")
        for i, part in enumerate(self.train):
            need(part in PARTS, f"train[{i}]", f"unknown part {show(part)} (valid: {', '.join(PARTS)})")


@dataclass(frozen=True, kw_only=True, repr=False)
class DataConfig(Section):
    """The training data: a reader of ``models.datasets.DATASETS`` and its ``root`` (relative to the working
    directory). Folder layout: ``val_fraction`` of the identities (drawn with ``split_seed``) are held out
    for validation; ``ids`` restricts training to these identity folders. PRID2011 / iLIDS-VID: ``split`` is
    which of the 10 random splits."""

    dataset: str = "folder"
    root: str = "../shared/data/pku-reid"
    val_fraction: float = 0.2
    split_seed: int = 0
    split: int = 0
    ids: tuple[str, ...] | None = None

    def _check(self) -> None:
        check_choice(self, "dataset", tuple(DATASETS))
        need(bool(self.root.strip()), "root", "must not be empty")
        need(0 <= self.val_fraction < 1, "val_fraction", f"must be in [0, 1), got {show(self.val_fraction)}")
        check_between(self, "split", 0, 9)


@dataclass(frozen=True, kw_only=True, repr=False)
class TrainConfig(Section):
    """A training run (``configs/drsta_*.yaml``), loaded by the same loader as ``cams.yaml``: unknown keys and
    wrong types are one-line errors naming the file and the key; ``--set key=value`` overrides win.

    ``model`` shapes the network (:class:`models.drsta.DRSTAConfig`); ``backbone_weights`` initialises its
    backbone. ``loss`` is ``oim`` (with ``oim_momentum``, ``oim_temperature`` and an ``oim_queue`` of unlabeled
    tracklets) or ``softmax``; ``regularizer`` is ``hellinger`` (Q, Eq. 9), ``sparse`` (Q', Eq. 10) or
    ``none``, weighted by ``reg_weight``. Batches hold ``batch_p`` identities x ``batch_k`` tracklets.
    ``cache_features`` computes backbone features once when no stage trains the backbone. Validation every
    ``eval_every`` epochs; everything is written to ``out_dir``. Paths are relative to the working directory.
    """

    model: DRSTAConfig = field(default_factory=DRSTAConfig)
    backbone_weights: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    stages: tuple[StageConfig, ...] = (
        StageConfig(name="attention", epochs=20, lr=0.1, lr_step=15, train=("spatial", "fc")),
        StageConfig(
            name="joint", epochs=20, lr=0.1, lr_step=15, train=("spatial", "enhance", "temporal", "fc")
        ),
    )
    loss: str = "oim"
    oim_momentum: float = 0.5
    oim_temperature: float = 0.1
    oim_queue: int = 0
    regularizer: str = "hellinger"
    reg_weight: float = 0.1
    batch_p: int = 8
    batch_k: int = 2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    cache_features: bool = True
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/drsta"
    eval_every: int = 5

    def _check(self) -> None:
        need(len(self.stages) > 0, "stages", "needs at least one stage")
        check_choice(self, "loss", tuple(LOSSES))
        check_choice(self, "regularizer", REGULARIZERS)
        check_between(self, "oim_momentum", 0, 1)
        check_min(self, "oim_temperature", 0, strict=True)
        check_min(self, "oim_queue", 0)
        check_min(self, "reg_weight", 0)
        check_min(self, "batch_p", 1)
        check_min(self, "batch_k", 1)
        check_between(self, "momentum", 0, 1)
        check_min(self, "weight_decay", 0)
        check_device(self, "device")
        need(bool(self.out_dir.strip()), "out_dir", "must not be empty")
        check_min(self, "eval_every", 1)


TrainConfigError = ConfigError  # the name this module's callers know; every config error is a ConfigError


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The YAML file (optional: ``None`` starts from the defaults) < ``key=value`` overrides with dotted keys
    (``model.num_parts=4``, ``stages.1.lr=0.01``, ``stages=[...]``). Raises :class:`ConfigError` (one line,
    naming the file and the key) for any bad input."""
    if path is None:
        return from_mapping(TrainConfig, {}, overrides, source="training config")
    return load_yaml(TrainConfig, path, overrides)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able data of ``cfg`` (stored in checkpoints and ``final.json``)."""
    return to_plain(cfg, for_log=False)


# ---------------------------------------------------------------------------------------------- data


class FeatureCache:
    """Backbone feature grids of every image, plain and mirrored: (2, D, h, w) per image path."""

    def __init__(self, backbone: torch.nn.Module, paths: list[str], device: torch.device, batch: int = 64):
        self.index = {p: i for i, p in enumerate(paths)}
        feats = []
        backbone.eval()
        with torch.no_grad():
            for i in tqdm(range(0, len(paths), batch), desc="caching backbone features", unit="batch"):
                imgs = [read_image_bgr(p) for p in paths[i : i + batch]]
                x = preprocess_crops(imgs).to(device)
                both = torch.stack([backbone(x), backbone(x.flip(-1))], dim=1)  # (b, 2, D, h, w)
                feats.append(both.cpu())
        self.feats = torch.cat(feats)  # (P, 2, D, h, w)

    def grids(self, paths: list[str], flip: bool) -> torch.Tensor:
        return self.feats[[self.index[p] for p in paths], int(flip)]


def sample_paths(rec: TrackletRecord, n: int, train: bool, rng: np.random.Generator | None) -> list[str]:
    idx = restricted_random_sample(len(rec.paths), n, train=train, rng=rng)
    return [rec.paths[i] for i in idx]


# ---------------------------------------------------------------------------------------------- loops


def embed_records(
    model: DRSTA | AvgPoolReID,
    records: list[TrackletRecord],
    device: torch.device,
    cache: FeatureCache | None,
    batch: int = 16,
) -> torch.Tensor:
    """Test-time embeddings (first frame of each chunk), (T, embed_dim) on CPU."""
    n = model.num_frames
    data = TrackletDataset(records, n, train=False)
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(records), batch):
            idx = range(i, min(i + batch, len(records)))
            if cache is not None:
                paths = [p for j in idx for p in sample_paths(records[j], n, False, None)]
                res = model.forward_features(cache.grids(paths, False).to(device), n)
            else:
                res = model(torch.stack([data[j][0] for j in idx]).to(device))  # (b, N, 3, H, W)
            out.append(res.embeddings.cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def evaluate_records(
    model: DRSTA,
    query: list[TrackletRecord],
    gallery: list[TrackletRecord],
    device: torch.device,
    cache: FeatureCache | None = None,
) -> ReIDMetrics:
    same = query is gallery
    q = embed_records(model, query, device, cache).numpy()
    g = q if same else embed_records(model, gallery, device, cache).numpy()
    return rank_records(q, g, query, gallery)


def rank_records(
    q_emb: np.ndarray, g_emb: np.ndarray, query: list[TrackletRecord], gallery: list[TrackletRecord]
) -> ReIDMetrics:
    """Rank the ``gallery`` embeddings for each query embedding by cosine, with the records' ids and cameras
    (same person in the same camera discarded, as :func:`models.metrics.evaluate_rank` does)."""
    from models.metrics import cosine_distance

    return evaluate_rank(
        cosine_distance(q_emb, g_emb),
        np.array([r.pid for r in query]),
        np.array([r.pid for r in gallery]),
        np.array([r.camid for r in query]),
        np.array([r.camid for r in gallery]),
    )


def set_trainable(model: DRSTA, parts: tuple[str, ...]) -> list[torch.nn.Parameter]:
    modules = {
        "backbone": model.backbone,
        "spatial": model.spatial,
        "enhance": model.enhance,
        "temporal": model.temporal,
        "fc": torch.nn.ModuleList([model.neck, model.fc]),
    }
    params = []
    for name, module in modules.items():
        if module is None:
            continue
        on = name in parts
        for prm in module.parameters():
            prm.requires_grad_(on)
            if on:
                params.append(prm)
    return params


def load_split(cfg: TrainConfig):
    reader = get_reader(cfg.data.dataset)
    root = Path(cfg.data.root)
    if cfg.data.dataset == "folder":
        all_ids = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        if cfg.data.ids:
            all_ids = [i for i in all_ids if i in set(cfg.data.ids)]
        full = reader(root, ids=all_ids or None)
        if cfg.data.val_fraction > 0:
            train_ids, val_ids = split_ids(all_ids, cfg.data.val_fraction, cfg.data.split_seed)
        else:
            train_ids, val_ids = list(all_ids), []
        recs = full.gallery
        id_of = {r.tracklet_id: Path(r.paths[0]).parent.name for r in recs}
        train = [r for r in recs if id_of[r.tracklet_id] in set(train_ids)]
        val = [r for r in recs if id_of[r.tracklet_id] in set(val_ids)]
        return train, val, val, {"train_ids": list(train_ids), "val_ids": list(val_ids)}
    split = (
        reader(root, split=cfg.data.split) if cfg.data.dataset in ("prid2011", "ilidsvid") else reader(root)
    )
    return list(split.train), list(split.query), list(split.gallery), {}


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run every stage; return the final evaluation dict (also written to out_dir/final.json)."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    train_recs, query, gallery, split_meta = load_split(cfg)
    if not train_recs:
        raise ValueError(f"{cfg.data.root}: no training tracklets for dataset {cfg.data.dataset!r}")
    pid_map = {pid: i for i, pid in enumerate(sorted({r.pid for r in train_recs}))}

    backbone = build_backbone(cfg.model.backbone, weights=cfg.backbone_weights, pretrained=True)
    model = DRSTA(cfg.model, backbone=backbone).to(device)
    id_loss = build_id_loss(
        cfg.loss,
        cfg.model.embed_dim,
        len(pid_map),
        **(
            {"momentum": cfg.oim_momentum, "temperature": cfg.oim_temperature, "queue_size": cfg.oim_queue}
            if cfg.loss == "oim"
            else {}
        ),
    ).to(device)

    trains_backbone = any("backbone" in st.train for st in cfg.stages)
    cache = None
    if cfg.cache_features and not trains_backbone:
        paths = sorted({p for r in train_recs + query + gallery for p in r.paths})
        cache = FeatureCache(model.backbone, paths, device)

    start_stage, start_epoch, history = 0, 0, []
    last = out / "last.pt"
    if resume and last.exists():
        payload = read_checkpoint(last)
        state = payload["train_state"]
        model.load_state_dict(
            {**payload["head"], **{f"backbone.{k}": v for k, v in payload["backbone"].items()}}
        )
        id_loss.load_state_dict(state["loss"])
        start_stage, start_epoch, history = state["stage"], state["epoch"], json.loads(state["history"])
        print(f"resuming from {last}: stage {start_stage}, epoch {start_epoch}", file=sys.stderr)

    rng = np.random.default_rng(cfg.seed + 1000 * start_stage + start_epoch)
    sampler = PKSampler(
        train_recs, min(cfg.batch_p, len(pid_map)), cfg.batch_k, seed=int(rng.integers(2**31))
    )
    train_data = TrackletDataset(train_recs, cfg.model.num_frames, train=True, seed=cfg.seed, flip=cfg.flip)
    best = max((h.get("val_rank1", -1.0) for h in history), default=-1.0)
    weights_meta = {}
    if cfg.backbone_weights and Path(cfg.backbone_weights).is_file():
        weights_meta = {"source": cfg.backbone_weights, "sha256": sha256_file(cfg.backbone_weights)}

    for si in range(start_stage, len(cfg.stages)):
        stage = cfg.stages[si]
        params = set_trainable(model, stage.train)
        if "backbone" not in stage.train:
            model.backbone.eval()  # frozen backbone: batch-norm statistics stay as pretrained
        opt = torch.optim.SGD(params, lr=stage.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=stage.lr_step or 10**9, gamma=stage.lr_gamma)
        first = start_epoch if si == start_stage else 0
        if first and resume and last.exists() and "optimizer" in state and state["stage"] == si:
            opt.load_state_dict(state["optimizer"])
        for _ in range(first):
            sched.step()
        bar = tqdm(
            range(first, stage.epochs), desc=f"stage {si + 1}/{len(cfg.stages)} {stage.name}", unit="ep"
        )
        for epoch in bar:
            model.train()
            if "backbone" not in stage.train:
                model.backbone.eval()
            id_loss.train()
            tot = {"loss": 0.0, "id": 0.0, "reg": 0.0}
            batches = list(sampler)
            for batch in batches:
                recs = [train_recs[i] for i in batch]
                n = cfg.model.num_frames
                if cache is not None:
                    flips = rng.random(len(recs)) < 0.5 if cfg.flip else np.zeros(len(recs), bool)
                    grids = torch.cat(
                        [
                            cache.grids(sample_paths(r, n, True, rng), bool(f))
                            for r, f in zip(recs, flips, strict=True)
                        ]
                    ).to(device)
                    res = model.forward_features(grids, n)
                else:
                    res = model(torch.stack([train_data[i][0] for i in batch]).to(device))
                targets = torch.tensor([pid_map[r.pid] for r in recs], device=device)
                l_id = id_loss(res.embeddings, targets)
                l_reg = diversity_penalty(cfg.regularizer, res.spatial_attention)
                loss = l_id + cfg.reg_weight * l_reg
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot["loss"] += loss.item() / len(batches)
                tot["id"] += l_id.item() / len(batches)
                tot["reg"] += l_reg.item() / len(batches)
            sched.step()
            row = {
                "stage": si,
                "stage_name": stage.name,
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                **tot,
            }
            is_last = epoch + 1 == stage.epochs
            if query and ((epoch + 1) % cfg.eval_every == 0 or is_last):
                m = evaluate_records(model, query, gallery, device, cache)
                row.update(val_rank1=m.rank1, val_mAP=m.mAP)
            history.append(row)
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("loss", "reg", "val_rank1")})
            _write_logs(out, history)
            train_state = {
                "stage": si,
                "epoch": epoch + 1,  # epochs done in this stage; resume goes on from here
                "optimizer": opt.state_dict(),
                "loss": id_loss.state_dict(),
                "history": json.dumps(history),
                "config": json.dumps(config_to_dict(cfg)),
            }
            meta = {"dataset": cfg.data.dataset, **split_meta}
            save_checkpoint(last, model, include_backbone=True, meta=meta, train_state=train_state)
            if row.get("val_rank1", -1.0) > best:
                best = row["val_rank1"]
                save_checkpoint(
                    out / "best.pt", model, include_backbone=False, backbone_weights=weights_meta, meta=meta
                )
        start_epoch = 0

    final: dict[str, Any] = {"config": config_to_dict(cfg), **split_meta}
    if query:
        m = evaluate_records(model, query, gallery, device, cache)
        final["val"] = m.to_dict()
    mt = evaluate_records(model, train_recs, train_recs, device, cache)
    final["train"] = mt.to_dict()
    save_checkpoint(
        out / "final.pt",
        model,
        include_backbone=False,
        backbone_weights=weights_meta,
        meta={
            "dataset": cfg.data.dataset,
            **split_meta,
            "final": json.dumps({k: final.get(k) for k in ("val", "train")}),
        },
    )
    (out / "final.json").write_text(json.dumps(final, indent=2))
    return final


def _write_logs(out: Path, history: list[dict[str, Any]]) -> None:
    with open(out / "log.jsonl", "w") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")
    keys = sorted({k for row in history for k in row})
    with open(out / "log.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="training YAML (configs/*.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    args = ap.parse_args(argv)
    configure_torch()
    try:
        cfg = load_train_config(args.config, args.set)
        final = train(cfg, resume=args.resume)
    except (TrainConfigError, FileNotFoundError, KeyError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(json.dumps({k: final[k] for k in ("val", "train") if k in final}))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DataConfig", "StageConfig", "TrainConfig", "TrainConfigError", "load_train_config", "train"]
