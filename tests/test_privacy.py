"""Head blurring: the head band of a person box loses its detail, every other pixel stays byte-identical."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.privacy import HEAD_FRACTION, blur_crop_head, blur_head, blur_heads, head_region
from tests.conftest import shared_path


def _noise(h: int = 240, w: int = 320, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w) if channels is None else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _outside(image: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = region
    mask = np.ones(image.shape[:2], bool)
    mask[y1:y2, x1:x2] = False
    return image[mask]


@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        ((100, 50, 140, 150), (320, 240), (100, 50, 140, 70)),  # 100 px tall: the top 20 rows
        ((100.4, 50.6, 139.2, 150.0), (320, 240), (100, 50, 140, 70)),  # fractional: outward to whole pixels
        ((-10, -20, 30, 80), (320, 240), None),  # the band (rows -20..0) lies above the image
        ((300, 200, 400, 300), (320, 240), (300, 200, 320, 220)),  # clipped at the right
        ((10, 10, 20, 12), (320, 240), (10, 10, 20, 11)),  # a tiny box still gets one row
        ((50, 50, 50, 90), (320, 240), None),  # empty box
        ((400, 10, 450, 90), (320, 240), None),  # right of the image
    ],
)
def test_head_region(box, size, expected) -> None:
    assert head_region(box, size) == expected


@pytest.mark.parametrize("channels", [3, None])
def test_head_band_is_blurred_and_the_rest_is_byte_identical(channels: int | None) -> None:
    image = _noise(channels=channels)
    box = (100, 40, 160, 200)  # 160 px tall: band rows 40..72
    region = head_region(box, (image.shape[1], image.shape[0]))
    x1, y1, x2, y2 = region

    out = blur_head(image, box)

    assert out.shape == image.shape and out.dtype == np.uint8
    before = image[y1:y2, x1:x2].astype(np.float64)
    after = out[y1:y2, x1:x2].astype(np.float64)
    assert after.var() < 0.02 * before.var()  # pure noise -> nearly flat: detail gone
    assert np.array_equal(_outside(out, region), _outside(image, region))
    assert np.array_equal(image, _noise(channels=channels))  # the input is not modified


def test_a_face_like_pattern_becomes_unrecognisable() -> None:
    """A high-contrast 'face' (eyes and mouth) inside the band: after blurring, its features are gone."""
    image = np.full((200, 200, 3), 200, np.uint8)
    box = (60, 20, 140, 220)  # 200 px tall: band rows 20..60, width 80
    image[28:36, 75:85] = 0  # left eye
    image[28:36, 115:125] = 0  # right eye
    image[48:52, 85:115] = 0  # mouth
    out = blur_head(image, box)
    band = out[20:60, 60:140].astype(np.float64)
    # The darkest remaining pixel is close to the band's mean: no feature stands out any more.
    assert band.mean() - band.min() < 25 and band.max() - band.min() < 40


def test_several_boxes_and_the_empty_case() -> None:
    image = _noise()
    assert np.array_equal(blur_heads(image, np.zeros((0, 4))), image)
    assert np.array_equal(blur_heads(image, []), image)
    boxes = [(10, 10, 60, 110), (200, 100, 260, 200)]
    out = blur_heads(image, boxes)
    changed = np.argwhere((out != image).any(axis=2))
    regions = [head_region(b, (320, 240)) for b in boxes]
    for y, x in changed:
        assert any(x1 <= x < x2 and y1 <= y < y2 for x1, y1, x2, y2 in regions)
    for x1, y1, x2, y2 in regions:
        assert out[y1:y2, x1:x2].astype(float).var() < 0.05 * image[y1:y2, x1:x2].astype(float).var()


def test_a_box_outside_the_image_changes_nothing() -> None:
    image = _noise()
    assert np.array_equal(blur_head(image, (400, 300, 500, 400)), image)


def test_crop_head_is_the_top_fraction_of_the_crop() -> None:
    crop = _noise(256, 128)
    out = blur_crop_head(crop)
    rows = int(np.ceil(256 * HEAD_FRACTION))  # 52
    assert np.array_equal(out[rows:], crop[rows:])
    assert out[:rows].astype(float).var() < 0.05 * crop[:rows].astype(float).var()


def test_on_real_footage_only_the_head_band_changes() -> None:
    cap = cv2.VideoCapture(str(shared_path("data/vtest/vtest.avi")))
    ok, frame = cap.read()
    cap.release()
    if not ok:
        pytest.skip("vtest.avi does not decode here")
    box = (420, 180, 470, 330)
    region = head_region(box, (frame.shape[1], frame.shape[0]))
    out = blur_head(frame, box)
    x1, y1, x2, y2 = region
    assert np.array_equal(_outside(out, region), _outside(frame, region))
    assert out[y1:y2, x1:x2].astype(float).var() < 0.5 * frame[y1:y2, x1:x2].astype(float).var()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: blur_head(np.zeros((4, 4, 3), np.float32), (0, 0, 2, 2)), "uint8"),
        (lambda: blur_heads(np.zeros((4, 4, 3), np.uint8), [[0, 0, 2]]), r"\(N, 4\)"),
        (lambda: blur_head(np.zeros((4, 4, 3), np.uint8), (0, 0, float("nan"), 2)), "finite"),
        (lambda: blur_head(np.zeros((4, 4, 3), np.uint8), (0, 0, 2, 2), fraction=0), "fraction"),
        (lambda: blur_crop_head(np.zeros(4, np.uint8)), "crop"),
    ],
)
def test_bad_input_raises_value_error(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
