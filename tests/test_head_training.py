"""Head training on cached frozen features: the keep-only-if-better rule, the loss, and the written checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.backbones import OPENVINO_MODELS, preprocess_crops
from models.calibrate import calibrate_threshold, cross_camera_pairs
from models.camera_looks import look_for
from models.checkpoint import checkpoint_centering, checkpoint_threshold, load_drsta, read_checkpoint
from models.datasets import read_folder, read_image_bgr
from models.drsta import AvgPoolReID, DRSTAConfig
from models.metrics import ReIDMetrics
from models.train_head import (
    FLIP,
    LOOK0,
    FeatureBank,
    HeadTrainConfig,
    beats,
    camera_variants,
    cross_camera_loss,
    head_embeddings,
    later_cameras,
    recalibrate,
    train_head,
    training_variant,
)
from pipeline.matching.centering import PRIOR_WEIGHT
from tests.conftest import shared_path


def m(rank1: float, mAP: float) -> ReIDMetrics:
    return ReIDMetrics(
        cmc=np.array([rank1, 1.0]), rank1=rank1, rank5=1, rank10=1, rank20=1, mAP=mAP, num_query=2
    )


@pytest.mark.parametrize(
    ("head", "base", "expected"),
    [
        ({6: m(0.9, 0.95), 2: m(0.9, 0.94)}, {6: m(0.9, 0.95), 2: m(0.9, 0.93)}, True),  # better mAP at 2
        ({6: m(0.9, 0.95), 2: m(0.9, 0.93)}, {6: m(0.9, 0.95), 2: m(0.9, 0.93)}, False),  # equal: not better
        ({6: m(1.0, 0.99), 2: m(0.85, 0.93)}, {6: m(0.9, 0.95), 2: m(0.9, 0.93)}, False),  # worse rank-1 at 2
        ({6: m(0.9, 0.90), 2: m(1.0, 1.00)}, {6: m(0.9, 0.95), 2: m(0.9, 0.93)}, False),  # worse mAP at 6
    ],
)
def test_kept_only_when_no_setting_is_worse_and_the_sum_is_better(head, base, expected) -> None:
    assert beats(head, base) is expected


def test_cross_camera_loss_known_values() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    pids, cams = torch.tensor([1, 1, 2, 2]), torch.tensor([0, 1, 0, 1])
    # each tracklet sees two other-camera tracklets: its match at cosine 1, the other person at 0
    want = math.log(1 + math.exp(-1 / 0.5))
    assert cross_camera_loss(emb, pids, cams, 0.5).item() == pytest.approx(want, rel=1e-6)
    # swapping the people's cameras' embeddings makes every match the worst: the loss grows
    assert cross_camera_loss(emb[[0, 2, 2, 0]], pids, cams, 0.5).item() > want
    # no tracklet with a match in another camera: zero, still differentiable
    lone = cross_camera_loss(emb[:2].requires_grad_(), torch.tensor([1, 2]), torch.tensor([0, 1]), 0.5)
    assert lone.item() == 0.0 and lone.requires_grad


def test_the_protocol_loss_also_ranks_other_people_of_the_own_camera() -> None:
    # the embeddings say only which camera a tracklet came from: both people of camera 0 at [1, 0]
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    pids, cams = torch.tensor([1, 1, 2, 2]), torch.tensor([0, 1, 0, 1])
    # other cameras only: the match and the other person are both at cosine 0, so the camera goes unpunished
    assert cross_camera_loss(emb, pids, cams, 0.5).item() == pytest.approx(math.log(2), rel=1e-6)
    # the standard protocol's gallery: the other person of the own camera (cosine 1) outranks the match
    want = math.log(2 + math.exp(1 / 0.5))
    assert cross_camera_loss(emb, pids, cams, 0.5, True).item() == pytest.approx(want, rel=1e-6)
    # the same person in the own camera is never a candidate (the protocol leaves it out)
    two_shots = cross_camera_loss(emb[[0, 1, 0]], torch.tensor([1, 1, 1]), torch.tensor([0, 1, 0]), 0.5, True)
    assert two_shots.item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def small_pku(tmp_path_factory):
    """Ten PKU identities (symlinked): eight to train and select on, two held out."""
    pku = shared_path("data/pku-reid")
    shared_path(OPENVINO_MODELS["openvino_0288"])
    root = tmp_path_factory.mktemp("pku10")
    ids = sorted(p.name for p in pku.iterdir() if p.is_dir())[:10]
    for i in ids:
        (root / i).symlink_to(pku / i)
    return root, ids


def bank_of(cache_file) -> FeatureBank:
    data = torch.load(cache_file, weights_only=True)
    return FeatureBank({p: i for i, p in enumerate(data["paths"])}, data["grids"], data["embs"])


def config(
    small_pku, tmp_path, epochs: int, half: bool = False, looks: int = 0, look_scope: str = "tracklet"
) -> HeadTrainConfig:
    root, ids = small_pku
    return HeadTrainConfig(
        model=DRSTAConfig(
            backbone="openvino_0288", start="own", num_parts=2, num_frames=6, attn_hidden=16, embed_dim=256
        ),
        root=str(root),
        val_ids=tuple(ids[-2:]),
        select_fraction=0.25,
        epochs=epochs,
        batch_p=4,
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        out=str(tmp_path / "out"),
        head_float16=half,
        looks=looks,
        look_scope=look_scope,
    )


def run(small_pku, tmp_path, epochs: int, half: bool = False, looks: int = 0, look_scope: str = "tracklet"):
    return train_head(
        config(small_pku, tmp_path, epochs, half, looks, look_scope)
    ), tmp_path / "out" / "head.pt"


def test_untrained_run_writes_the_baseline_with_its_threshold(small_pku, tmp_path) -> None:
    summary, ckpt = run(small_pku, tmp_path, epochs=0)
    assert summary["improved"] is False and summary["best_epoch"] == -1
    assert summary["val_kept"] == summary["val_baseline"]
    payload = read_checkpoint(ckpt)
    assert "backbone" not in payload  # head only
    assert not payload["backbone_weights"]["source"].startswith("/")  # relative to the repository
    t = checkpoint_threshold(ckpt)
    assert t is not None and -1.0 <= t <= 1.0
    assert set(payload["meta"]["operating_point"]) >= {"false_merge_rate", "miss_rate", "rule"}
    # loaded through the worker's path, the head is the own-embedding baseline on real crops
    model = load_drsta(ckpt)
    root, ids = small_pku
    crops = [read_image_bgr(str(root / ids[0] / f"01_{k}.png")) for k in range(1, 7)]
    x = preprocess_crops(crops, size=model.backbone.input_size)[None]
    base = AvgPoolReID(model.backbone, num_frames=6, pool="embedding")
    assert torch.allclose(model.embed(x).embeddings, base.embed(x).embeddings, atol=1e-5)
    assert (tmp_path / "out" / "cmc_val.png").stat().st_size > 0
    # camera centering, recomputed here from the file, the cached maps and the folder: the prior is the mean unit
    # embedding of the training ids' tracklets as filmed; the centred threshold is calibrated on the val ids'
    # cross-camera cosines after each camera's mean, shrunk towards the prior, is taken out
    rec = checkpoint_centering(ckpt)
    meta = payload["meta"]
    assert rec is not None and rec.prior_weight == PRIOR_WEIGHT
    assert set(rec.operating_point) == set(meta["operating_point"])  # the raw point's shape, threshold apart
    assert meta["threshold"] == summary["operating_point"]["threshold"]  # the raw-scale threshold stays
    (cache,) = (tmp_path / "cache").glob("openvino_0288-*.pt")
    bank = bank_of(cache)
    records = read_folder(root).gallery
    train_recs = [r for r in records if r.tracklet_id.split("/")[0] in json.loads(meta["train_ids"])]
    val_recs = [r for r in records if r.tracklet_id.split("/")[0] in json.loads(meta["val_ids"])]
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    prior = unit(head_embeddings(model, bank, train_recs, 6, "cpu").astype(np.float64)).mean(axis=0)
    assert len(train_recs) == 2 * len(json.loads(meta["train_ids"])) and np.allclose(
        rec.prior, prior, atol=1e-6
    )
    val = unit(head_embeddings(model, bank, val_recs, 6, "cpu").astype(np.float64))
    cams, pids = np.array([r.camid for r in val_recs]), np.array([r.pid for r in val_recs])
    means = {
        c: (PRIOR_WEIGHT * prior + val[cams == c].sum(0)) / (PRIOR_WEIGHT + (cams == c).sum()) for c in cams
    }
    centred = unit(val - np.stack([means[c] for c in cams]))
    sim = centred @ centred.T
    i, j = np.triu_indices(len(val), k=1)
    i, j = i[cams[i] != cams[j]], j[cams[i] != cams[j]]
    same = pids[i] == pids[j]
    want = calibrate_threshold(sim[i, j][same], sim[i, j][~same], max_false_merge=0.01)
    assert rec.threshold == pytest.approx(want.threshold, abs=1e-5)
    assert rec.operating_point["same_pairs"] == 2 and rec.operating_point["different_pairs"] == 2
    assert summary["centering"]["operating_point"]["threshold"] == rec.threshold  # head.json's summary too


def test_training_uses_the_cache_and_records_history(small_pku, tmp_path) -> None:
    summary, ckpt = run(small_pku, tmp_path, epochs=2, half=True)
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert list((tmp_path / "cache").glob("openvino_0288-*.pt"))  # maps cached once, outside the repo
    payload = read_checkpoint(ckpt)
    assert summary["improved"] == payload["meta"]["improved"]
    assert payload["head"]["fc.weight"].dtype == torch.float16  # half the bytes on disk
    assert load_drsta(ckpt).fc.weight.dtype == torch.float32
    # --recalibrate renews the thresholds and the centring record of an existing checkpoint exactly, and
    # changes nothing else
    renewed = ("threshold", "operating_point", "centering")
    stripped = tmp_path / "stripped.pt"
    torch.save({**payload, "meta": {k: v for k, v in payload["meta"].items() if k not in renewed}}, stripped)
    assert checkpoint_centering(stripped) is None and checkpoint_threshold(stripped) is None
    cfg = config(small_pku, tmp_path, epochs=2, half=True)
    got = recalibrate(cfg, stripped)
    assert got["centering"]["operating_point"]["threshold"] == payload["meta"]["centering"]["threshold"]
    again = read_checkpoint(stripped)
    assert again["meta"] == payload["meta"]
    assert all(torch.equal(again["head"][k], payload["head"][k]) for k in payload["head"])
    with pytest.raises(ValueError, match="meta train_ids is not the split that --config makes"):
        recalibrate(replace(cfg, seed=cfg.seed + 1), stripped)  # another seed splits the ids otherwise

    # with calibration looks: the val ids' later cameras are cached through looks no training run drew, one
    # per camera for all its people, and both thresholds are calibrated on the pairs of every look pooled
    looked = replace(cfg, calibration_looks=2, calibration_seed=77)
    got = recalibrate(looked, stripped)
    meta = read_checkpoint(stripped)["meta"]
    assert all(torch.equal(read_checkpoint(stripped)["head"][k], payload["head"][k]) for k in payload["head"])
    (cal,) = (tmp_path / "cache").glob("openvino_0288-*-calibration2s77.pt")
    bank = bank_of(cal)
    val_recs = [r for r in read_folder(small_pku[0]).gallery if r.tracklet_id.split("/")[0] in cfg.val_ids]
    later = later_cameras(val_recs)
    assert later == {r.tracklet_id for r in val_recs if r.camid == 1}  # PKU: camera "02" of every person
    backbone = load_drsta(ckpt).backbone
    for r in val_recs:
        image = read_image_bgr(r.paths[0])
        grids = bank.grids[bank.index[r.paths[0]]].float()
        if r.tracklet_id not in later:
            assert not grids[LOOK0:].abs().any()  # a first camera is never looked at
            continue
        want, _ = backbone.features_and_embedding(
            preprocess_crops([look_for(f"camera {r.camid}", 1, 77).apply(image)], size=backbone.input_size)
        )
        assert torch.allclose(grids[LOOK0 + 1], want[0], atol=2e-2, rtol=1e-2)
    model = load_drsta(stripped)
    (main,) = [p for p in (tmp_path / "cache").glob("openvino_0288-*.pt") if "calibration" not in p.name]
    full = bank_of(main)
    pids, cams = np.array([r.pid for r in val_recs]), np.array([r.camid for r in val_recs])
    sets = [head_embeddings(model, full, val_recs, 6, "cpu")] + [
        head_embeddings(model, bank, val_recs, 6, "cpu", {t: LOOK0 + j for t in later}) for j in range(2)
    ]
    pairs = [cross_camera_pairs(e, pids, cams) for e in sets]
    want = calibrate_threshold(*(np.concatenate(x) for x in zip(*pairs, strict=True)), max_false_merge=0.01)
    assert meta["threshold"] == pytest.approx(want.threshold, abs=1e-5)
    op = meta["operating_point"]
    assert (op["same_pairs"], op["different_pairs"]) == (3 * 2, 3 * 2) and "2 camera looks" in op["pairs"]
    assert (
        meta["centering"]["operating_point"]["same_pairs"] == 6 and got["operating_point"]["same_pairs"] == 6
    )
    assert not any(np.allclose(sets[0], s, atol=1e-3) for s in sets[1:])  # the looks changed the embeddings


def test_camera_looks_are_cached_for_the_training_pool_and_scored_on_the_select_ids(
    small_pku, tmp_path
) -> None:
    summary, _ = run(small_pku, tmp_path, epochs=1, looks=2)
    # the select ids are scored as filmed and with each person's second camera seen through a look
    assert set(summary["select_baseline"]) == {"6", "2", "6u", "2u"}
    assert {"select_mAP@6u", "select_mAP@2u"} <= set(summary["history"][0])
    assert set(summary["val_baseline"]) == {"6", "2"}  # the keep decision stays on the ids as filmed
    (cache,) = (tmp_path / "cache").glob("openvino_0288-*-looks2s0.pt")
    data = torch.load(cache, weights_only=True)
    grids, paths = data["grids"], data["paths"]
    assert grids.shape[1] == LOOK0 + 2
    root, ids = small_pku
    val = [i for i, p in enumerate(paths) if p.split("/")[-2] in ids[-2:]]
    pool = [i for i, p in enumerate(paths) if p.split("/")[-2] not in ids[-2:]]
    assert not grids[val, LOOK0:].float().abs().any()  # never computed for held-out ids
    looked, plain = grids[pool, LOOK0].float(), grids[pool, 0].float()
    assert looked.abs().sum(dim=(1, 2, 3)).min() > 0  # every training-pool image has its looks
    assert not torch.allclose(looked, plain, atol=1e-2)  # and they are not the image as filmed
    assert not torch.allclose(grids[pool, LOOK0].float(), grids[pool, LOOK0 + 1].float(), atol=1e-2)


def test_camera_scoped_looks_are_drawn_per_camera_of_a_batch() -> None:
    model = DRSTAConfig(backbone="openvino_0288", start="own", num_parts=2)
    per_camera = HeadTrainConfig(model=model, looks=3, look_scope="camera", look_prob=0.5)
    rng = np.random.default_rng(0)
    draws = [camera_variants(per_camera, [0, 1], rng) for _ in range(400)]
    assert all(set(d) <= {0, 1} and set(d.values()) <= {LOOK0, LOOK0 + 1, LOOK0 + 2} for d in draws)
    looked = sum(len(d) for d in draws) / 800
    assert 0.4 < looked < 0.6  # each camera of a batch is looked at with look_prob
    # a camera left as filmed never gets a per-tracklet look on top
    assert {training_variant(per_camera, rng) for _ in range(200)} == {0, FLIP}
    per_tracklet = HeadTrainConfig(model=model, looks=3, look_scope="tracklet", look_prob=0.5)
    assert camera_variants(per_tracklet, [0, 1], rng) == {}
    assert {training_variant(per_tracklet, rng) for _ in range(200)} == {0, FLIP, LOOK0, LOOK0 + 1, LOOK0 + 2}


def test_camera_scoped_looks_give_every_person_of_a_camera_the_same_look(small_pku, tmp_path) -> None:
    run(small_pku, tmp_path, epochs=1, looks=1, look_scope="camera")
    (cache,) = (tmp_path / "cache").glob("openvino_0288-*-looks1s0cam.pt")
    data = torch.load(cache, weights_only=True)
    root, ids = small_pku
    index = {p: i for i, p in enumerate(data["paths"])}
    backbone = load_drsta(tmp_path / "out" / "head.pt").backbone
    for cam in (0, 1):  # PKU camera "01" is camid 0, "02" camid 1
        for pid in ids[:2]:
            path = str(root / pid / f"0{cam + 1}_1.png")
            image = read_image_bgr(path)
            want, _ = backbone.features_and_embedding(
                preprocess_crops([look_for(f"camera {cam}", 0, 0).apply(image)], size=backbone.input_size)
            )
            assert torch.allclose(data["grids"][index[path], LOOK0].float(), want[0], atol=2e-2, rtol=1e-2)
