"""PETS09 split-view GT tracklets (evaluation only) and the "unlike" camera look."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import read_image_bgr
from models.splitview import read_splitview, unlike_look
from tests.conftest import shared_path


@pytest.mark.parametrize("value", [0, 128, 255])
def test_unlike_look_is_gamma_then_gains(value) -> None:
    flat = np.full((9, 9, 3), value, np.uint8)  # flat: the blur changes nothing
    want = np.clip((value / 255) ** 1.4 * np.array([1.15, 1.0, 0.8]) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert (unlike_look(flat)[4, 4] == want).all()


@pytest.fixture(scope="module")
def both_looks(tmp_path_factory):
    root = shared_path("data/pets09-splitview-dev")
    shared_path("data/vtest/vtest.avi")
    cache = tmp_path_factory.mktemp("splitview")
    return {look: read_splitview(root, look=look, cache_dir=cache, every=10) for look in ("same", "unlike")}


def test_tracklets_follow_the_ground_truth(both_looks) -> None:
    split = both_looks["same"]
    assert split.train == [] and split.query == split.gallery  # evaluation only
    recs = split.query
    assert len(recs) == 18  # 8 MOT15 appearances in the left camera, 10 in the right
    by_cam = {c: {r.pid for r in recs if r.camid == c} for c in (0, 1)}
    assert by_cam[0] & by_cam[1] == {1, 2, 5, 8, 16, 17}  # the README's people seen by both cameras
    assert by_cam[1] - by_cam[0] == {3, 4}
    assert all(r.paths == tuple(sorted(r.paths)) for r in recs)  # frames in temporal order


def test_unlike_changes_only_the_right_camera(both_looks) -> None:
    same, unlike = (both_looks[k].query for k in ("same", "unlike"))
    for a, b in zip(same, unlike, strict=True):
        pa, pb = read_image_bgr(a.paths[0]), read_image_bgr(b.paths[0])
        assert pa.shape == pb.shape
        assert np.array_equal(pa, pb) == (a.camid == 0), a.tracklet_id


def test_pieces_cut_each_tracklet_in_order_without_losing_a_crop(tmp_path_factory) -> None:
    root = shared_path("data/pets09-splitview-dev")
    shared_path("data/vtest/vtest.avi")
    cache = tmp_path_factory.mktemp("splitview-pieces")
    whole = read_splitview(root, cache_dir=cache, every=10).query
    pieces = read_splitview(root, cache_dir=cache, every=10, piece=3).query
    assert len(pieces) > len(whole)
    for w in whole:
        mine = [p for p in pieces if p.tracklet_id.split("#")[0] == w.tracklet_id]
        assert [p.tracklet_id for p in mine] == [f"{w.tracklet_id}#{k}" for k in range(len(mine))]
        assert sum((p.paths for p in mine), ()) == w.paths  # consecutive, nothing lost or repeated
        assert {(p.pid, p.camid) for p in mine} == {(w.pid, w.camid)}
        assert len(mine) == max(1, round(len(w.paths) / 3))
    with pytest.raises(ValueError, match="piece"):
        read_splitview(root, cache_dir=cache, every=10, piece=0)
