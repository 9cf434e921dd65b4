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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from models.backbones import build_backbone, preprocess_crops
from models.checkpoint import read_checkpoint, resolve_device, save_checkpoint
from models.datasets import PKSampler, TrackletDataset, TrackletRecord, get_reader, read_image_bgr, split_ids
from models.drsta import DRSTA, AvgPoolReID, DRSTAConfig
from models.losses import REGULARIZERS, build_id_loss, diversity_penalty
from models.metrics import ReIDMetrics, evaluate_rank
from models.runtime import configure_torch
from models.sampling import restricted_random_sample
from models.weights import sha256_file

PARTS = ("backbone", "spatial", "enhance", "temporal", "fc")


@dataclass(frozen=True)
class StageConfig:
    name: str
    epochs: int
    lr: float = 0.1
    lr_step: int | None = None  # epoch (within the stage) at which lr drops to lr * lr_gamma
    lr_gamma: float = 0.1
    train: tuple[str, ...] = ("spatial", "enhance", "temporal", "fc")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "folder"
    root: str = "../shared/data/pku-reid"
    val_fraction: float = 0.2  # folder layout: identities held out for validation
    split_seed: int = 0
    split: int = 0  # PRID2011 / iLIDS-VID: which of the 10 random splits
    ids: tuple[str, ...] | None = None  # folder layout: restrict to these identity folders


@dataclass(frozen=True)
class TrainConfig:
    model: DRSTAConfig = field(default_factory=DRSTAConfig)
    backbone_weights: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    stages: tuple[StageConfig, ...] = (
        StageConfig("attention", epochs=20, lr=0.1, lr_step=15, train=("spatial", "fc")),
        StageConfig("joint", epochs=20, lr=0.1, lr_step=15, train=("spatial", "enhance", "temporal", "fc")),
    )
    loss: str = "oim"  # "oim" or "softmax"
    oim_momentum: float = 0.5
    oim_temperature: float = 0.1
    oim_queue: int = 0
    regularizer: str = "hellinger"  # "hellinger" (Q, Eq. 9), "sparse" (Q', Eq. 10) or "none"
    reg_weight: float = 0.1
    batch_p: int = 8  # identities per batch
    batch_k: int = 2  # tracklets per identity
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    cache_features: bool = True  # only used when no stage trains the backbone
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs/drsta"
    eval_every: int = 5


# ---------------------------------------------------------------------------------------------- config


class TrainConfigError(ValueError):
    pass


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise TrainConfigError(f"{where}.{unknown[0]}: unknown key (valid: {', '.join(known)})")
    kwargs = {}
    for name, value in data.items():
        if cls is TrainConfig and name == "model":
            kwargs[name] = _build(DRSTAConfig, value, f"{where}.model")
        elif cls is TrainConfig and name == "data":
            kwargs[name] = _build(DataConfig, value, f"{where}.data")
        elif cls is TrainConfig and name == "stages":
            if not isinstance(value, list) or not value:
                raise TrainConfigError(f"{where}.stages: expected a non-empty list of stages")
            kwargs[name] = tuple(_build(StageConfig, s, f"{where}.stages[{i}]") for i, s in enumerate(value))
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise TrainConfigError(f"{where}: {exc}") from None


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """YAML file (optional) < ``key=value`` overrides with dotted keys (``model.num_parts=4``)."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise TrainConfigError(f"{p}: config file not found")
        raw = yaml.safe_load(p.read_text()) or {}
        if not isinstance(raw, dict):
            raise TrainConfigError(f"{p}: expected a mapping at the top level")
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node: Any = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]  # stages.1.lr: the second stage
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise TrainConfigError(f"--set {key}: {part!r} is not a section or a list index")
        last = parts[-1]
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = yaml.safe_load(value)
        elif isinstance(node, dict):
            node[last] = yaml.safe_load(value)
        else:
            raise TrainConfigError(f"--set {key}: {last!r} is not a key or a list index")
    cfg = _build(TrainConfig, raw, str(path) if path else "config")
    if cfg.regularizer not in REGULARIZERS:
        raise TrainConfigError(f"regularizer: expected one of {REGULARIZERS}, got {cfg.regularizer!r}")
    for i, st in enumerate(cfg.stages):
        bad = sorted(set(st.train) - set(PARTS))
        if bad:
            raise TrainConfigError(f"stages[{i}].train: unknown part {bad[0]!r} (valid: {', '.join(PARTS)})")
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=list))


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
    from models.metrics import cosine_distance

    same = query is gallery
    q = embed_records(model, query, device, cache).numpy()
    g = q if same else embed_records(model, gallery, device, cache).numpy()
    return evaluate_rank(
        cosine_distance(q, g),
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


__all__ = ["TrainConfig", "StageConfig", "DataConfig", "load_train_config", "train"]
