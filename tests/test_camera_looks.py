"""Random camera looks (training augmentation): deterministic per tracklet, a real change of the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from models.camera_looks import (
    CameraLook,
    LookRanges,
    draw_look,
    look_for,
    second_camera_looked,
)
from models.datasets import read_folder, read_image_bgr
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return read_image_bgr(str(shared_path("data/pku-reid/001/01_1.png")))


def test_one_look_per_tracklet_and_index(crop) -> None:
    a, b = look_for("001/01", 0, seed=0), look_for("001/01", 0, seed=0)
    assert a == b  # every frame of a tracklet, on every run
    assert look_for("001/01", 1, seed=0) != a and look_for("001/02", 0, seed=0) != a
    assert look_for("001/01", 0, seed=1) != a
    np.testing.assert_array_equal(a.apply(crop), b.apply(crop))


def test_draws_stay_in_their_ranges() -> None:
    r = LookRanges()
    rng = np.random.default_rng(3)
    looks = [draw_look(rng, r) for _ in range(200)]
    for lk in looks:
        assert r.scale[0] <= lk.scale <= r.scale[1] and r.gamma[0] <= lk.gamma <= r.gamma[1]
        assert all(r.gain[0] <= g <= r.gain[1] for g in lk.gains)
        assert lk.blur == 0.0 or r.blur[0] <= lk.blur <= r.blur[1]
        assert r.jpeg[0] <= lk.jpeg <= r.jpeg[1]
    assert 0.3 < np.mean([lk.blur == 0 for lk in looks]) < 0.7  # half the cameras are sharp


def test_apply_changes_tone_colour_and_detail(crop) -> None:
    out = look_for("001/01", 0, seed=0).apply(crop)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - crop.astype(int)).mean() > 3
    dark = CameraLook(scale=1.0, gamma=1.5, gains=(1, 1, 1), brightness=1.0, blur=0.0, jpeg=100).apply(crop)
    assert dark.mean() < crop.mean() - 5  # gamma > 1 darkens mid-tones
    warm = CameraLook(scale=1.0, gamma=1.0, gains=(0.8, 1, 1.2), brightness=1.0, blur=0.0, jpeg=100).apply(
        crop
    )
    assert warm[..., 2].mean() > crop[..., 2].mean() and warm[..., 0].mean() < crop[..., 0].mean()  # BGR
    soft = CameraLook(scale=0.4, gamma=1.0, gains=(1, 1, 1), brightness=1.0, blur=1.5, jpeg=100).apply(crop)
    detail = lambda im: np.abs(np.diff(im.astype(int), axis=1)).mean()  # noqa: E731
    assert detail(soft) < 0.8 * detail(crop)
    ident = CameraLook(scale=1.0, gamma=1.0, gains=(1, 1, 1), brightness=1.0, blur=0.0, jpeg=100).apply(crop)
    assert np.abs(ident.astype(int) - crop.astype(int)).mean() < 1.5  # only JPEG q100 rounding


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8 BGR"):
        look_for("x", 0, 0).apply(np.zeros((8, 8), np.uint8))


def test_second_camera_looked_changes_only_the_later_cameras(tmp_path) -> None:
    pku = shared_path("data/pku-reid")
    recs = [r for r in read_folder(pku).gallery if r.tracklet_id.split("/")[0] in ("001", "003")]
    out = second_camera_looked(recs, 1000, tmp_path)
    assert [r.tracklet_id for r in out] == [r.tracklet_id for r in recs]
    for before, after in zip(recs, out, strict=True):
        first = min(r.camid for r in recs if r.pid == before.pid)
        if before.camid == first:
            assert after == before
            continue
        assert all(str(tmp_path) in p for p in after.paths) and len(after.paths) == len(before.paths)
        want = look_for(before.tracklet_id, 0, 1000).apply(read_image_bgr(before.paths[0]))
        np.testing.assert_array_equal(read_image_bgr(after.paths[0]), want)
    again = second_camera_looked(recs, 1000, tmp_path)  # cached: the same files
    assert [r.paths for r in again] == [r.paths for r in out]
