"""Train a DRSTA head that starts at its backbone's honest baseline, on cached frozen features; keep it only
if validation improves.

    python -m models.train_head --config configs/drsta_head_pku_openvino_0277.yaml [--out DIR]

1. The head is built with ``start: own`` (``models.drsta``): uniform spatial attentions (zero logits) gating
   cells weighted by the backbone's own pooling weights, zero-residual enhancement, uniform temporal
   attention, and the backbone's own projection per frame. Untrained, it *is* the backbone's own embedding
   mean-pooled over the tracklet.
2. Backbone maps and own embeddings of every image (and its mirror image, for training ids) are computed
   once and cached (``cache_dir``, outside the repository; float16 maps), so the head trains in minutes.
   With ``looks`` > 0 every training-pool tracklet is also cached through that many random camera looks
   (``models.camera_looks``), drawn per tracklet (``look_scope: tracklet``; a training tracklet is seen
   through one of them with ``look_prob``) or per camera (``look_scope: camera``: every person of a camera
   shares its looks, and in each batch each camera is seen through one of its looks with ``look_prob``, so
   the people of one unlike camera share its look as they do in a real one); the select ids are then also
   scored with each person's second camera through a look (keys ``"<frames>u"``), so the epoch is picked
   for robustness to unlike cameras too.
3. Training ids are the folder's identities minus ``val_ids`` (the held-out ids of the default checkpoint's
   split); ``select_fraction`` of them are set aside to pick the best epoch, so the validation ids decide
   only once, at the end: the trained head is kept when, at every ``eval_frames`` setting, it is at least
   the baseline in rank-1 and mAP on the validation ids and better in their sum; else the untrained head
   (the baseline itself) is written, and ``meta["improved"]`` says which.
4. The matching threshold is calibrated on the validation ids' cross-camera pairs (``models.calibrate``),
   as filmed and, with ``calibration_looks`` K > 0, also with every person's later cameras through each of K
   camera looks (one look per camera, shared by its people, drawn with ``calibration_seed``: looks no
   training run and no evaluation uses), all pairs pooled, because the cameras it will serve do not look
   alike either. It is stored in the checkpoint with its operating point (``"pairs"`` says which).
5. Camera centering (``pipeline.matching.centering``): the prior, the kept head's mean unit embedding of the
   training ids' tracklets as filmed (cut to N frames, no looks, no mirror images), and a second threshold
   calibrated the same way on the same pairs after ``center_by_camera`` (each set of pairs on its own) with
   that prior, stored as ``meta["centering"] = {"prior": [floats], "prior_weight", "threshold",
   "operating_point"}`` (read it with ``models.checkpoint.checkpoint_centering``). ``meta["threshold"]``
   stays the raw-cosine one. ``--recalibrate CKPT`` renews both thresholds and this record of a trained
   checkpoint and changes nothing else.

Writes ``out/head.pt`` (head only; the backbone is referenced by its path relative to the repository and
its sha256), ``out/head.json`` (split, metrics, history) and ``out/cmc_val.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from models.backbones import build_backbone, preprocess_crops
from models.calibrate import OperatingPoint, calibrate_threshold, cross_camera_pairs
from models.camera_looks import look_for
from models.checkpoint import REPO_ROOT, resolve_device, save_checkpoint
from models.datasets import PKSampler, TrackletRecord, read_folder, read_image_bgr, split_ids
from models.drsta import DRSTA, DRSTAConfig
from models.losses import OIMLoss, diversity_penalty
from models.metrics import ReIDMetrics, evaluate_all_vs_other_cameras
from models.runtime import configure_torch
from models.sampling import restricted_random_sample
from models.weights import sha256_file
from pipeline.matching.centering import PRIOR_WEIGHT, center_by_camera


@dataclass(frozen=True)
class HeadTrainConfig:
    """Everything a head-training run depends on (YAML keys = field names; ``model`` is a DRSTAConfig)."""

    model: DRSTAConfig
    root: str = "../shared/data/pku-reid"
    backbone_weights: str | None = None  # None: the backbone's default file in ../shared
    val_ids: tuple[str, ...] = ()  # held out: never trained on, used once for the keep decision
    select_fraction: float = 0.2  # of the training ids, to pick the best epoch
    seed: int = 0
    epochs: int = 30
    lr: float = 3e-4
    weight_decay: float = 5e-4
    batch_p: int = 8
    batch_k: int = 2
    loss: str = "cross_camera"  # "cross_camera", "protocol" (see cross_camera_loss) or "oim"
    temperature: float = 0.05  # of the cosine logits, both losses
    oim_momentum: float = 0.5
    reg_weight: float = 0.1  # diversity term Q (Eq. 9)
    min_frames: int = 1  # training tracklets are cut to min_frames..8 frames at random (2-frame robustness)
    looks: int = 0  # random camera looks cached per training-pool tracklet (models.camera_looks); 0: none
    look_prob: float = 0.5  # chance a training tracklet (or a batch's camera) is seen through a look
    look_scope: str = "tracklet"  # looks drawn per "tracklet" or per "camera" (shared by its people)
    eval_frames: tuple[int, ...] = (6, 2)
    max_false_merge: float = 0.01
    calibration_looks: int = 0  # thresholds also calibrated with the val ids' later cameras through K looks
    calibration_seed: int = 3000  # of those looks: one no training run (seed) or evaluation (1000-1007) uses
    head_float16: bool = True  # store the head in float16 (a committed checkpoint must stay < 5 MB)
    device: str = "auto"
    cache_dir: str = "~/.cache/reid-pipeline/features"
    out: str = "runs/head"

    @classmethod
    def from_yaml(cls, path: str | Path) -> HeadTrainConfig:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown} (valid: {sorted(known)})")
        if "model" not in raw:
            raise ValueError(f"{path}: 'model' (the DRSTA config) is required")
        raw["model"] = DRSTAConfig.from_dict(raw["model"])
        if raw.get("look_scope", "tracklet") not in LOOK_SCOPES:
            raise ValueError(f"{path}: look_scope: expected one of {LOOK_SCOPES}, got {raw['look_scope']!r}")
        if raw.get("loss", "cross_camera") not in LOSSES:
            raise ValueError(f"{path}: loss: expected one of {LOSSES}, got {raw['loss']!r}")
        for k in ("val_ids", "eval_frames"):
            if k in raw:
                raw[k] = tuple(raw[k])
        return cls(**raw)


LOOK_SCOPES = ("tracklet", "camera")
FLIP = 1  # variant index of the mirror image in a FeatureBank
LOOK0 = 2  # variant index of a tracklet's first camera look (models.camera_looks)


@dataclass
class FeatureBank:
    """Cached backbone outputs: per image path, maps (V, D, h, w) float16 and own embeddings (V, E). Variant
    0 is the image, ``FLIP`` its mirror image, ``LOOK0 + j`` the image through its tracklet's j-th camera
    look (zeros where not computed)."""

    index: dict[str, int]
    grids: torch.Tensor
    embs: torch.Tensor

    def take(self, paths: list[str], variant: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps (F, D, h, w) and own embeddings (F, E) of ``paths``, seen through ``variant``."""
        i = [self.index[p] for p in paths]
        return self.grids[i, variant].float(), self.embs[i, variant]


def build_bank(
    backbone,
    paths: list[str],
    flip_paths: set[str],
    cache_file: Path,
    batch: int = 32,
    look_keys: dict[str, str] | None = None,
    looks: int = 0,
    seed: int = 0,
) -> FeatureBank:
    """Load ``cache_file`` if it holds exactly these paths, else compute (progress bar) and save it.

    ``look_keys`` maps a path to its tracklet's key; those paths also get ``looks`` camera looks, the j-th
    drawn by ``look_for(key, j, seed)`` (one draw per tracklet, as one camera). Put ``looks`` and ``seed`` in
    the cache file's name: the file records paths only.
    """
    look_keys = look_keys or {}
    if cache_file.is_file():
        data = torch.load(cache_file, map_location="cpu", weights_only=True)
        if data.get("paths") == paths and data["grids"].shape[1] == LOOK0 + looks:
            return FeatureBank({p: i for i, p in enumerate(paths)}, data["grids"], data["embs"])
    grids, embs = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(paths), batch), desc="caching backbone features", unit="batch"):
            chunk = paths[i : i + batch]
            images = [read_image_bgr(p) for p in chunk]
            x = preprocess_crops(images, size=backbone.input_size)
            g0, e0 = backbone.features_and_embedding(x)
            gs, es = [g0], [e0]
            flip = torch.tensor([p in flip_paths for p in chunk])
            g1, e1 = torch.zeros_like(g0), torch.zeros_like(e0)
            if flip.any():
                g1[flip], e1[flip] = backbone.features_and_embedding(x[flip].flip(-1))
            gs.append(g1)
            es.append(e1)
            have = [k for k, p in enumerate(chunk) if p in look_keys]
            for j in range(looks):
                gj, ej = torch.zeros_like(g0), torch.zeros_like(e0)
                if have:
                    seen = [look_for(look_keys[chunk[k]], j, seed).apply(images[k]) for k in have]
                    xj = preprocess_crops(seen, size=backbone.input_size)
                    gj[have], ej[have] = backbone.features_and_embedding(xj)
                gs.append(gj)
                es.append(ej)
            grids.append(torch.stack(gs, 1).half())
            embs.append(torch.stack(es, 1).float())
    bank = FeatureBank({p: i for i, p in enumerate(paths)}, torch.cat(grids), torch.cat(embs))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    torch.save({"paths": paths, "grids": bank.grids, "embs": bank.embs}, tmp)
    os.replace(tmp, cache_file)
    return bank


def cut(record: TrackletRecord, frames: int, train: bool, rng: np.random.Generator | None) -> list[str]:
    """The tracklet's paths cut to ``frames`` (restricted random sampling; all when it is shorter)."""
    if len(record.paths) <= frames:
        return list(record.paths)
    return [
        record.paths[i] for i in restricted_random_sample(len(record.paths), frames, train=train, rng=rng)
    ]


def head_embeddings(
    model: DRSTA,
    bank: FeatureBank,
    records: list[TrackletRecord],
    frames: int,
    device,
    variants: dict[str, int] | None = None,
) -> np.ndarray:
    """Test-time embeddings from cached maps, tracklets cut to ``frames`` then sampled to the model's N;
    ``variants`` maps a tracklet id to the bank variant it is seen through (default 0, the image)."""
    n = model.num_frames
    variants = variants or {}
    model.eval()
    out = []
    with torch.no_grad():
        for r in records:
            kept = cut(r, frames, False, None)
            paths = [kept[i] for i in restricted_random_sample(len(kept), n, train=False)]
            grids, _ = bank.take(paths, variants.get(r.tracklet_id, 0))
            out.append(model.forward_features(grids.to(device), n).embeddings.cpu())
    return torch.cat(out).numpy()


def baseline_embeddings(
    bank: FeatureBank,
    records: list[TrackletRecord],
    frames: int,
    n: int,
    variants: dict[str, int] | None = None,
) -> np.ndarray:
    """The honest baseline from cached own embeddings: mean over the same N sampled frames, L2-normalised."""
    variants = variants or {}
    out = []
    for r in records:
        kept = cut(r, frames, False, None)
        picks = [kept[i] for i in restricted_random_sample(len(kept), n, train=False)]
        _, e = bank.take(picks, variants.get(r.tracklet_id, 0))
        out.append(torch.nn.functional.normalize(e.mean(0), dim=0))
    return torch.stack(out).numpy()


def centering_prior(embeddings: np.ndarray) -> np.ndarray:
    """The camera-centering prior: the mean of these embeddings, each first scaled to unit length (float64)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or not len(e):
        raise ValueError(f"centering prior: expected (T, E) embeddings, got shape {e.shape}")
    return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).mean(axis=0)


def metrics_of(emb: np.ndarray, records: list[TrackletRecord]) -> ReIDMetrics:
    return evaluate_all_vs_other_cameras(
        emb, np.array([r.pid for r in records]), np.array([r.camid for r in records])
    )


LOSSES = ("cross_camera", "protocol", "oim")


def cross_camera_loss(
    emb: torch.Tensor,
    pids: torch.Tensor,
    cams: torch.Tensor,
    temperature: float,
    same_camera_negatives: bool = False,
) -> torch.Tensor:
    """Each tracklet ranks the batch's other tracklets; its positives are the same person in other cameras.

    emb (B, E) unit norm, pids (B,), cams (B,). Softmax of cosine / temperature over the candidates; the loss
    is -log of the probability mass on the positives, averaged over tracklets that have one (a batch of P ids
    x their two cameras gives every tracklet one). The candidates are the tracklets from *other* cameras, or,
    with ``same_camera_negatives``, exactly the standard protocol's gallery: everything but the tracklet itself
    and the same person in the same camera, so other people of the query's own camera compete too (loss
    ``protocol``). Without them nothing stops a head from letting a camera's look pull its people together.
    """
    logits = emb @ emb.T / temperature  # (B, B)
    same_pid = pids[:, None] == pids[None, :]
    other = cams[:, None] != cams[None, :]
    pos = other & same_pid
    candidates = (other | ~same_pid) if same_camera_negatives else other
    logits = logits.masked_fill(~candidates, float("-inf"))
    has = pos.any(dim=1)
    if not has.any():
        return emb.sum() * 0.0
    log_all = torch.logsumexp(logits[has], dim=1)
    log_pos = torch.logsumexp(logits[has].masked_fill(~pos[has], float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def training_variant(cfg: HeadTrainConfig, rng: np.random.Generator) -> int:
    """The bank variant one training tracklet is seen through: one of its camera looks with probability
    ``look_prob`` (when there are looks drawn per tracklet), else the image or its mirror image with equal
    chance."""
    if cfg.looks and cfg.look_scope == "tracklet" and rng.random() < cfg.look_prob:
        return LOOK0 + int(rng.integers(cfg.looks))
    return FLIP if rng.random() < 0.5 else 0


def camera_variants(cfg: HeadTrainConfig, cams: list[int], rng: np.random.Generator) -> dict[int, int]:
    """With ``look_scope: camera``: for each camera of a batch, with ``look_prob``, the look all its tracklets
    are seen through (the other cameras' tracklets are seen as filmed or mirrored). Empty otherwise."""
    if cfg.look_scope != "camera" or not cfg.looks:
        return {}
    draws = {c: (rng.random() < cfg.look_prob, LOOK0 + int(rng.integers(cfg.looks))) for c in cams}
    return {c: v for c, (on, v) in draws.items() if on}


def metrics_dict(ms: dict[int, ReIDMetrics]) -> dict[str, dict[str, Any]]:
    """{frames: {"rank1", "mAP", "cmc" (first 20 ranks)}} for JSON."""
    return {
        str(f): {"rank1": m.rank1, "mAP": m.mAP, "cmc": [round(float(c), 4) for c in m.cmc[:20]]}
        for f, m in ms.items()
    }


def score(ms: dict[int, ReIDMetrics]) -> float:
    return sum(m.rank1 + m.mAP for m in ms.values())


def beats(head: dict[int, ReIDMetrics], base: dict[int, ReIDMetrics]) -> bool:
    """At least the baseline in rank-1 and mAP at every setting, and better in their sum."""
    eps = 1e-9
    no_worse = all(head[f].rank1 >= base[f].rank1 - eps and head[f].mAP >= base[f].mAP - eps for f in head)
    return no_worse and score(head) > score(base) + eps


@dataclass
class Prepared:
    """What training and :func:`recalibrate` start from: the id split, its records, the backbone, and the
    feature bank (cached maps and own embeddings of every PKU image, with the mirror images and camera looks
    of the training pool), and the val ids' calibration looks."""

    train_ids: list[str]
    select_ids: list[str]
    train_recs: list[TrackletRecord]
    select_recs: list[TrackletRecord]
    val_recs: list[TrackletRecord]
    backbone: Any
    weights_path: Path
    sha: str
    bank: FeatureBank
    calibration_bank: FeatureBank | None  # the val ids' images and calibration looks (None: no looks)
    calibration_looks: int
    calibration_seed: int


def prepare(cfg: HeadTrainConfig, device) -> Prepared:
    """The split of ``cfg`` and its feature bank (built, or loaded from ``cfg.cache_dir``)."""
    root = Path(cfg.root)
    everything = read_folder(root).gallery
    id_of = {r.tracklet_id: r.tracklet_id.split("/")[0] for r in everything}
    all_ids = sorted(set(id_of.values()))
    missing = sorted(set(cfg.val_ids) - set(all_ids))
    if missing or not cfg.val_ids:
        raise ValueError(f"val_ids: need held-out ids present under {root}; missing {missing[:3]}")
    pool_ids = [i for i in all_ids if i not in set(cfg.val_ids)]
    train_ids, select_ids = split_ids(pool_ids, cfg.select_fraction, cfg.seed)
    train_recs, select_recs, val_recs = (
        [r for r in everything if id_of[r.tracklet_id] in set(ids)]
        for ids in (train_ids, select_ids, cfg.val_ids)
    )

    backbone = build_backbone(cfg.model.backbone, weights=cfg.backbone_weights, pretrained=True).to(device)
    weights_path = Path(backbone.weights_file or "")
    sha = sha256_file(weights_path) if weights_path.is_file() else ""
    paths = sorted(p for r in everything for p in r.paths)
    flip_paths = {p for r in train_recs for p in r.paths}
    # The key a look is drawn for: each tracklet its own, or each camera one shared by every person it films
    # (so a batch's same-camera people share their camera's look, as in a real camera).
    look_key = (lambda r: f"camera {r.camid}") if cfg.look_scope == "camera" else (lambda r: r.tracklet_id)
    look_keys = {p: look_key(r) for r in train_recs + select_recs for p in r.paths} if cfg.looks else {}
    key = hashlib.sha256(json.dumps([cfg.model.backbone, sha, paths]).encode()).hexdigest()[:16]
    looks_tag = (
        f"-looks{cfg.looks}s{cfg.seed}{'cam' if cfg.look_scope == 'camera' else ''}" if cfg.looks else ""
    )
    bank = build_bank(
        backbone,
        paths,
        flip_paths,
        Path(cfg.cache_dir).expanduser() / f"{cfg.model.backbone}-{key}{looks_tag}.pt",
        look_keys=look_keys,
        looks=cfg.looks,
        seed=cfg.seed,
    )
    calibration_bank = None
    if cfg.calibration_looks:
        # every person's later cameras through each calibration look, one look per camera shared by its people
        val_paths = sorted(p for r in val_recs for p in r.paths)
        later = later_cameras(val_recs)
        cal_keys = {p: f"camera {r.camid}" for r in val_recs if r.tracklet_id in later for p in r.paths}
        cal_key = hashlib.sha256(json.dumps([cfg.model.backbone, sha, val_paths]).encode()).hexdigest()[:16]
        calibration_bank = build_bank(
            backbone,
            val_paths,
            set(),
            Path(cfg.cache_dir).expanduser()
            / f"{cfg.model.backbone}-{cal_key}-calibration{cfg.calibration_looks}s{cfg.calibration_seed}.pt",
            look_keys=cal_keys,
            looks=cfg.calibration_looks,
            seed=cfg.calibration_seed,
        )
    return Prepared(
        train_ids,
        select_ids,
        train_recs,
        select_recs,
        val_recs,
        backbone,
        weights_path,
        sha,
        bank,
        calibration_bank,
        cfg.calibration_looks,
        cfg.calibration_seed,
    )


def later_cameras(records: list[TrackletRecord]) -> set[str]:
    """Ids of the tracklets not on their person's first (lowest) camera: the ones a camera look is put on."""
    first: dict[int, int] = {}
    for r in records:
        first[r.pid] = min(first.get(r.pid, r.camid), r.camid)
    return {r.tracklet_id for r in records if r.camid != first[r.pid]}


def calibration_sets(model, data: Prepared, n: int, device) -> list[np.ndarray]:
    """The val ids' head embeddings the thresholds are calibrated on: as filmed, then once through each
    calibration look (every person's later cameras through it)."""
    sets = [head_embeddings(model, data.bank, data.val_recs, n, device)]
    later = later_cameras(data.val_recs)
    for j in range(data.calibration_looks if data.calibration_bank is not None else 0):
        variants = {t: LOOK0 + j for t in later}
        sets.append(head_embeddings(model, data.calibration_bank, data.val_recs, n, device, variants))
    return sets


def calibrate_on(
    sets: list[np.ndarray],
    records: list[TrackletRecord],
    max_false_merge: float,
    prior: np.ndarray | None = None,
) -> OperatingPoint:
    """One threshold for the cross-camera pairs of every set pooled (each set centred on its own first, with
    ``prior``): a set is one deployment of the val ids."""
    pids, cams = np.array([r.pid for r in records]), np.array([r.camid for r in records])
    pairs = [
        cross_camera_pairs(e if prior is None else center_by_camera(e, cams, prior), pids, cams) for e in sets
    ]
    return calibrate_threshold(
        np.concatenate([s for s, _ in pairs]),
        np.concatenate([d for _, d in pairs]),
        max_false_merge=max_false_merge,
    )


def thresholds_record(model, data: Prepared, n: int, device, max_false_merge: float) -> tuple[dict, dict]:
    """The matching thresholds of this head (``models.calibrate``), raw and camera-centred, calibrated on
    :func:`calibration_sets`; camera centering's prior (``pipeline.matching.centering``) is the head's mean
    unit embedding of the training ids' tracklets as filmed. Returns (the checkpoint's ``meta`` keys
    ``threshold``, ``operating_point``, ``centering``; the summary's ``operating_point``, ``centering``)."""
    sets = calibration_sets(model, data, n, device)
    prior = centering_prior(head_embeddings(model, data.bank, data.train_recs, n, device))
    pairs = "the val ids' cross-camera pairs as filmed" + (
        f" and through {len(sets) - 1} camera looks (models.camera_looks, seed {data.calibration_seed})"
        if len(sets) > 1
        else ""
    )
    raw = calibrate_on(sets, data.val_recs, max_false_merge)
    centred = calibrate_on(sets, data.val_recs, max_false_merge, prior)

    def point(op: OperatingPoint) -> dict[str, Any]:
        return {**{k: v for k, v in op.to_dict().items() if k != "threshold"}, "pairs": pairs}

    meta = {
        "threshold": raw.threshold,
        "operating_point": point(raw),
        "centering": {
            "prior": [float(x) for x in prior],
            "prior_weight": PRIOR_WEIGHT,
            "threshold": centred.threshold,
            "operating_point": point(centred),
        },
    }
    summary = {
        "operating_point": {**raw.to_dict(), "pairs": pairs},
        "centering": {
            "prior_weight": PRIOR_WEIGHT,
            "prior_norm": float(np.linalg.norm(prior)),
            "operating_point": {**centred.to_dict(), "pairs": pairs},
        },
    }
    return meta, summary


def recalibrate(cfg: HeadTrainConfig, checkpoint: str | Path) -> dict[str, Any]:
    """Renew the matching thresholds and the camera-centering record (:func:`thresholds_record`) of an existing
    head ``checkpoint`` trained with ``cfg``, computed exactly as :func:`train_head` computes them for a head it
    has just trained; the head and the rest of the file stay as they were. The checkpoint's recorded split
    must be the one ``cfg`` makes (else ValueError). Returns the summary's records. The file is replaced
    atomically."""
    from models.checkpoint import read_checkpoint

    path = Path(checkpoint)
    payload = read_checkpoint(path)
    meta = payload.get("meta", {})
    device = resolve_device(cfg.device)
    data = prepare(cfg, device)
    for key, ids in (("train_ids", data.train_ids), ("val_ids", list(cfg.val_ids))):
        if json.loads(meta.get(key, "null")) != ids:
            raise ValueError(f"{path}: meta {key} is not the split that --config makes")
    # the prepared backbone (one OpenVINO model, not two) under the checkpoint's own head
    model = DRSTA(DRSTAConfig.from_dict(dict(payload["config"])), backbone=data.backbone).to(device).eval()
    missing, unexpected = model.load_state_dict(payload["head"], strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise ValueError(f"{path}: its head does not fit {cfg.model.backbone}: {(unexpected or missing)[:3]}")
    record, summary = thresholds_record(model, data, cfg.model.num_frames, device, cfg.max_false_merge)
    payload["meta"] = {**meta, **record}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return summary


def train_head(cfg: HeadTrainConfig) -> dict[str, Any]:
    """Run the recipe in the module docstring; return the summary written to ``out/head.json``."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    data = prepare(cfg, device)
    train_ids, select_ids = data.train_ids, data.select_ids
    train_recs, select_recs, val_recs = data.train_recs, data.select_recs, data.val_recs
    backbone, weights_path, sha, bank = data.backbone, data.weights_path, data.sha, data.bank

    model = DRSTA(cfg.model, backbone=backbone).to(device)
    n = cfg.model.num_frames
    # With looks, the select ids are also scored with each person's second camera seen through a camera
    # look (an "unlike" pair of cameras drawn for ids never trained on), keyed "<frames>u".
    unlike_sel = {t: LOOK0 for t in later_cameras(select_recs)} if cfg.looks else {}

    def conditions(records: list[TrackletRecord]) -> list[tuple[Any, int, dict[str, int] | None]]:
        plain = [(f, f, None) for f in cfg.eval_frames]
        if records is not select_recs or not unlike_sel:
            return plain
        return plain + [(f"{f}u", f, unlike_sel) for f in cfg.eval_frames]

    def evaluate(records: list[TrackletRecord]) -> dict[Any, ReIDMetrics]:
        return {
            k: metrics_of(head_embeddings(model, bank, records, f, device, v), records)
            for k, f, v in conditions(records)
        }

    base_val = {f: metrics_of(baseline_embeddings(bank, val_recs, f, n), val_recs) for f in cfg.eval_frames}
    base_sel = {
        k: metrics_of(baseline_embeddings(bank, select_recs, f, n, v), select_recs)
        for k, f, v in conditions(select_recs)
    }
    start_state = {k: v.detach().clone() for k, v in model.head_state_dict().items()}

    pid_map = {pid: i for i, pid in enumerate(sorted({r.pid for r in train_recs}))}
    oim = OIMLoss(cfg.model.embed_dim, len(pid_map), momentum=cfg.oim_momentum, temperature=cfg.temperature)
    with torch.no_grad():  # the table starts at the baseline's identity means (the head starts there too)
        base_train = torch.from_numpy(baseline_embeddings(bank, train_recs, 8, n))
        for r, e in zip(train_recs, base_train, strict=True):
            oim.lut[pid_map[r.pid]] += e
        oim.lut.copy_(torch.nn.functional.normalize(oim.lut, dim=1))
    oim = oim.to(device)
    params = model.head_parameters()
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    sampler = PKSampler(train_recs, min(cfg.batch_p, len(pid_map)), cfg.batch_k, seed=cfg.seed)
    best = (score(base_sel), -1, start_state)  # epoch -1: the untrained head, i.e. the baseline
    history = []
    bar = tqdm(range(cfg.epochs), desc="training head", unit="ep")
    for epoch in bar:
        model.train()
        model.backbone.eval()
        tot = 0.0
        batches = list(sampler)
        for batch in batches:
            recs = [train_recs[i] for i in batch]
            grids = []
            by_camera = camera_variants(cfg, sorted({r.camid for r in recs}), rng)
            for r in recs:
                kept = cut(r, int(rng.integers(cfg.min_frames, len(r.paths) + 1)), True, rng)
                picks = [kept[i] for i in restricted_random_sample(len(kept), n, train=True, rng=rng)]
                variant = by_camera.get(r.camid)
                grids.append(bank.take(picks, training_variant(cfg, rng) if variant is None else variant)[0])
            res = model.forward_features(torch.cat(grids).to(device), n)
            targets = torch.tensor([pid_map[r.pid] for r in recs], device=device)
            if cfg.loss == "oim":
                l_id = oim(res.embeddings, targets)
            else:
                cams = torch.tensor([r.camid for r in recs], device=device)
                l_id = cross_camera_loss(
                    res.embeddings, targets, cams, cfg.temperature, cfg.loss == "protocol"
                )
            loss = l_id + cfg.reg_weight * diversity_penalty("hellinger", res.spatial_attention)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item() / len(batches)
        sched.step()
        sel = evaluate(select_recs)
        row = {
            "epoch": epoch + 1,
            "loss": tot,
            **{f"select_r1@{f}": m.rank1 for f, m in sel.items()},
            **{f"select_mAP@{f}": m.mAP for f, m in sel.items()},
        }
        history.append(row)
        if beats(sel, base_sel) and score(sel) > best[0]:
            best = (
                score(sel),
                epoch + 1,
                {k: v.detach().clone() for k, v in model.head_state_dict().items()},
            )
        bar.set_postfix(loss=f"{tot:.3f}", sel=f"{score(sel):.3f}", best_epoch=best[1])

    model.load_state_dict(best[2], strict=False)
    trained_val = evaluate(val_recs)
    improved = best[1] > 0 and beats(trained_val, base_val)
    if not improved:
        model.load_state_dict(start_state, strict=False)
    if cfg.head_float16:  # measure and calibrate exactly what the file will hold
        with torch.no_grad():
            for t in model.head_state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.half().float())
    final_val = evaluate(val_recs)
    thresholds, thresholds_summary = thresholds_record(model, data, n, device, cfg.max_false_merge)
    summary = {
        "backbone": cfg.model.backbone,
        "train_ids": train_ids,
        "select_ids": select_ids,
        "val_ids": list(cfg.val_ids),
        "best_epoch": best[1],
        "improved": improved,
        "val_baseline": metrics_dict(base_val),
        "val_trained": metrics_dict(trained_val),
        "val_kept": metrics_dict(final_val),
        "select_baseline": metrics_dict(base_sel),
        **thresholds_summary,
        "history": history,
    }
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    # relative to the repository (not resolved: ../shared may be a link), as the default checkpoint records it
    source = os.path.relpath(weights_path.absolute(), REPO_ROOT) if weights_path.is_file() else None
    meta = {
        "dataset": f"PKU-Reid folder {cfg.root}",
        "train_ids": json.dumps(train_ids),
        "select_ids": json.dumps(select_ids),
        "val_ids": json.dumps(list(cfg.val_ids)),
        "improved": improved,
        "best_epoch": best[1],
        **thresholds,
        "final": json.dumps({"val_baseline": summary["val_baseline"], "val_kept": summary["val_kept"]}),
    }
    save_checkpoint(
        out / "head.pt",
        model,
        include_backbone=False,
        backbone_weights={"source": source, "sha256": sha} if source else None,
        meta=meta,
        head_dtype=torch.float16 if cfg.head_float16 else None,
    )
    (out / "head.json").write_text(json.dumps(summary, indent=2) + "\n")
    from models.plots import plot_cmc

    curves = {
        f"{lbl} @ {f} frames": ms[f].cmc
        for f in cfg.eval_frames
        for lbl, ms in (("own embedding mean-pooled", base_val), ("DRSTA head (kept)", final_val))
    }
    plot_cmc(curves, out / "cmc_val.png", title=f"{cfg.model.backbone} on PKU validation ids", max_rank=20)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.train_head", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", help="override the config's out folder")
    ap.add_argument("--epochs", type=int, help="override the config's epochs")
    ap.add_argument(
        "--recalibrate",
        metavar="CKPT",
        help="train nothing: renew the thresholds and the camera-centering record of this head checkpoint, "
        "trained with --config",
    )
    args = ap.parse_args(argv)
    configure_torch()
    try:
        cfg = HeadTrainConfig.from_yaml(args.config)
        over = {k: v for k, v in (("out", args.out), ("epochs", args.epochs)) if v is not None}
        if over:
            cfg = HeadTrainConfig(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **over})
        if args.recalibrate:
            print(json.dumps(recalibrate(cfg, args.recalibrate)))
            return 0
        summary = train_head(cfg)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                k: summary[k]
                for k in (
                    "best_epoch",
                    "improved",
                    "val_baseline",
                    "val_kept",
                    "operating_point",
                    "centering",
                )
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
