"""The threshold that comes with a model: calibration on pairs with a known answer, and its checkpoint field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backbones import build_backbone
from models.calibrate import calibrate_threshold, cross_camera_pairs
from models.checkpoint import checkpoint_threshold, save_checkpoint
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
