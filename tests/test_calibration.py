"""The threshold that comes with a model: calibration on pairs with a known answer, and its checkpoint field."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from models.backbones import build_backbone
from models.calibrate import calibrate_threshold, cross_camera_pairs
from models.checkpoint import (
    CheckpointError,
    checkpoint_centering,
    checkpoint_threshold,
    model_name,
    save_checkpoint,
)
from models.drsta import DRSTA, DRSTAConfig


@pytest.mark.parametrize(
    ("same", "different", "max_fm", "threshold", "fm", "miss"),
    [
        ([0.8, 0.9], [0.1, 0.2], 0.01, 0.5, 0.0, 0.0),  # separable: midway between 0.2 and 0.8
        ([0.3, 0.9], [0.1, 0.5], 0.0, 0.7, 0.0, 0.5),  # overlap: no false merge costs a miss
        ([0.3, 0.9], [0.1, 0.5], 0.5, 0.2, 0.5, 0.0),  # allowing half the different pairs merges all same
        ([0.6], [0.6], 0.0, 0.6 + 1e-6, 0.0, 1.0),  # identical scores: nothing can be merged safely
    ],
)
def test_known_answers(same, different, max_fm, threshold, fm, miss) -> None:
    p = calibrate_threshold(np.array(same), np.array(different), max_false_merge=max_fm)
    assert p.threshold == pytest.approx(threshold)
    assert (p.false_merge_rate, p.miss_rate) == (pytest.approx(fm), pytest.approx(miss))
    assert (p.same_pairs, p.different_pairs) == (len(same), len(different))


@pytest.mark.parametrize(("same", "different"), [([], [0.1]), ([0.9], []), ([], [])])
def test_empty_pairs_raise(same, different) -> None:
    with pytest.raises(ValueError, match="same and different"):
        calibrate_threshold(np.array(same), np.array(different))


def test_cross_camera_pairs_leave_out_same_camera_pairs() -> None:
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    pids = np.array([1, 1, 2, 2])
    cams = np.array([0, 1, 0, 0])
    same, different = cross_camera_pairs(emb, pids, cams)
    # cross-camera pairs: (0,1) same 1.0; (1,2) diff 0.0; (1,3) diff 0.6; (0,2),(0,3),(2,3) are one camera
    assert sorted(same.tolist()) == pytest.approx([1.0])
    assert sorted(different.tolist()) == pytest.approx([0.0, 0.6])


def test_checkpoint_records_and_returns_the_threshold(tmp_path) -> None:
    model = DRSTA(
        DRSTAConfig(backbone="resnet18", num_parts=2, num_frames=2, attn_hidden=8),
        backbone=build_backbone("resnet18", pretrained=False),
    )
    p = calibrate_threshold(np.array([0.8, 0.9]), np.array([0.1, 0.2]))
    with_t = save_checkpoint(
        tmp_path / "a.pt",
        model,
        include_backbone=True,
        meta={"threshold": p.threshold, "operating_point": p.to_dict()},
    )
    without = save_checkpoint(tmp_path / "b.pt", model, include_backbone=True, meta={})
    assert checkpoint_threshold(with_t) == pytest.approx(0.5)
    assert checkpoint_threshold(without) is None
    assert torch.load(with_t, weights_only=True)["meta"]["operating_point"]["miss_rate"] == 0.0


@functools.cache  # built once: saving never changes it
def tiny_model() -> DRSTA:
    return DRSTA(
        DRSTAConfig(backbone="resnet18", num_parts=2, num_frames=2, attn_hidden=8),
        backbone=build_backbone("resnet18", pretrained=False),
    )


GOOD_CENTERING = {
    "prior": [0.5, -0.25, 0.125],
    "prior_weight": 10.0,
    "threshold": 0.3,
    "operating_point": {"false_merge_rate": 0.0, "miss_rate": 0.1, "same_pairs": 10, "different_pairs": 90},
}


def test_checkpoint_records_and_returns_the_centering(tmp_path) -> None:
    model = tiny_model()
    with_c = save_checkpoint(
        tmp_path / "a.pt", model, include_backbone=True, meta={"threshold": 0.6, "centering": GOOD_CENTERING}
    )
    got = checkpoint_centering(with_c)
    assert got.prior.dtype == np.float64 and got.prior.tolist() == [0.5, -0.25, 0.125]
    assert (got.prior_weight, got.threshold) == (10.0, 0.3)
    assert got.operating_point["miss_rate"] == 0.1
    assert checkpoint_threshold(with_c) == pytest.approx(0.6)  # the raw-scale threshold is a separate field
    without = save_checkpoint(tmp_path / "b.pt", model, include_backbone=True, meta={"threshold": 0.6})
    assert checkpoint_centering(without) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prior": [0.1, float("nan")]}, "centering.prior"),
        ({"prior": "0.1 0.2"}, "centering.prior"),
        ({"prior": [[0.1, 0.2]]}, "centering.prior"),
        ({"prior": []}, "centering.prior"),
        ({"prior_weight": 0.0}, "centering.prior_weight"),
        ({"prior_weight": "10"}, "centering.prior_weight"),
        ({"threshold": float("inf")}, "centering.threshold"),
        ({"threshold": None}, "centering.threshold"),
        ({"operating_point": [0.0, 0.1]}, "centering.operating_point"),
    ],
)
def test_malformed_centering_is_a_one_line_checkpoint_error_naming_the_field(tmp_path, change, field) -> None:
    path = save_checkpoint(
        tmp_path / "bad.pt",
        tiny_model(),
        include_backbone=True,
        meta={"centering": {**GOOD_CENTERING, **change}},
    )
    with pytest.raises(CheckpointError) as err:
        checkpoint_centering(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and f"meta {field}:" in msg


def test_centering_record_missing_a_field_or_not_a_dict(tmp_path) -> None:
    partial = {k: v for k, v in GOOD_CENTERING.items() if k != "threshold"}
    path = save_checkpoint(
        tmp_path / "c.pt", tiny_model(), include_backbone=True, meta={"centering": partial}
    )
    with pytest.raises(CheckpointError, match=r"meta centering\.threshold: missing"):
        checkpoint_centering(path)
    path = save_checkpoint(tmp_path / "d.pt", tiny_model(), include_backbone=True, meta={"centering": 0.3})
    with pytest.raises(CheckpointError, match="meta centering: expected a dict"):
        checkpoint_centering(path)


def test_the_model_name_follows_the_network_not_its_recorded_thresholds(tmp_path) -> None:
    model = tiny_model()
    a = save_checkpoint(tmp_path / "m.pt", model, include_backbone=True, meta={"threshold": 0.6})
    name = model_name(a)
    assert name.startswith("m@") and len(name) == len("m@") + 12
    # recalibrated (another threshold, a centring record): the same network, so its embeddings stay comparable
    payload = torch.load(a, weights_only=True)
    torch.save({**payload, "meta": {"threshold": 0.5, "centering": GOOD_CENTERING}}, tmp_path / "m2.pt")
    assert model_name(tmp_path / "m2.pt") == "m2@" + name[2:]
    # one weight changed by one float step: another network, another name
    head = dict(payload["head"])
    key = next(k for k, v in head.items() if v.is_floating_point() and v.numel())
    head[key] = head[key].clone()
    head[key].view(-1)[0] = torch.nextafter(head[key].view(-1)[0], torch.tensor(float("inf")))
    torch.save({**payload, "head": head}, tmp_path / "m3.pt")
    assert model_name(tmp_path / "m3.pt")[3:] != name[2:]
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        model_name(tmp_path / "absent.pt")
