"""A camera's ``crop``: validation, cropped frames from every recorded kind of source (real footage), and boxes
relative to the cropped view. The live-stream side is in tests/test_sources.py, beside its ffmpeg server."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.camera.crop import check_crop, check_crop_fits, crop_size
from pipeline.camera.sources import ImageFolderSource, SourceError, VideoFileSource, open_source
from pipeline.camera.tracklets import TrackletBuilder
from pipeline.config import TrackletConfig
from pipeline.transport.messages import Detections, Tracks
from tests.conftest import shared_path

pytestmark = pytest.mark.timeout(60)

VTEST = "data/vtest/vtest.avi"  # 768x576
MOT_IMG1 = "data/mot17-mini/train/MOT17-05-FRCNN/img1"  # 640x480, 6 images
PETS_RIGHT = (428, 0, 768, 576)  # data/pets09-splitview-dev/README.md: camera `right` = these pixels of vtest
SIZES = {VTEST: (768, 576), MOT_IMG1: (640, 480)}


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("crop", "expected"),
    [
        ((0, 0, 1, 1), (0, 0, 1, 1)),  # the smallest view
        ([428, 0, 768, 576], (428, 0, 768, 576)),  # a YAML list
        (np.array([1, 2, 3, 4], np.int64), (1, 2, 3, 4)),  # NumPy integers
    ],
)
def test_check_crop_accepts(crop, expected):
    out = check_crop(crop)
    assert out == expected and all(type(v) is int for v in out)
    assert crop_size(out) == (expected[2] - expected[0], expected[3] - expected[1])


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        ([], "expected [x1, y1, x2, y2] (4 integer pixels), got []"),  # the empty case
        ((0, 0, 10), "expected [x1, y1, x2, y2] (4 integer pixels), got (0, 0, 10)"),
        ((0, 0, 10, 10, 10), "expected [x1, y1, x2, y2] (4 integer pixels)"),
        ("0,0,9,9", "expected [x1, y1, x2, y2] (4 integer pixels), got '0,0,9,9'"),
        (None, "expected [x1, y1, x2, y2] (4 integer pixels), got None"),
        ((0, 0, 10.0, 10), "x2 must be an integer pixel, got 10.0"),
        ((0, True, 10, 10), "y1 must be an integer pixel, got True"),
        ((0, 0, "10", 10), "x2 must be an integer pixel, got '10'"),
        ((-1, 0, 10, 10), "x1 and y1 must be >= 0, got [-1, 0, 10, 10]"),
        ((0, -5, 10, 10), "x1 and y1 must be >= 0, got [0, -5, 10, 10]"),
        ((10, 0, 10, 10), "needs x1 < x2 and y1 < y2 (x2, y2 exclusive), got [10, 0, 10, 10]"),
        ((20, 0, 10, 10), "needs x1 < x2 and y1 < y2 (x2, y2 exclusive), got [20, 0, 10, 10]"),
        ((0, 10, 10, 3), "needs x1 < x2 and y1 < y2 (x2, y2 exclusive), got [0, 10, 10, 3]"),
    ],
)
def test_check_crop_refuses(crop, message):
    with pytest.raises(ValueError) as err:
        check_crop(crop)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("crop", "width", "height", "message"),
    [
        ((0, 0, 768, 576), 768, 576, None),  # the whole frame: x2, y2 exclusive
        ((767, 575, 768, 576), 768, 576, None),
        (
            (0, 0, 769, 576),
            768,
            576,
            "crop [0, 0, 769, 576] does not fit the 768x576 frame (x2 769 > width 768)",
        ),
        ((0, 0, 768, 600), 768, 576, "does not fit the 768x576 frame (y2 600 > height 576)"),
        ((800, 600, 900, 700), 768, 576, "(x2 900 > width 768, y2 700 > height 576)"),
    ],
)
def test_check_crop_fits(crop, width, height, message):
    if message is None:
        check_crop_fits(crop, width, height)
    else:
        with pytest.raises(ValueError) as err:
            check_crop_fits(crop, width, height)
        assert message in str(err.value)


# ------------------------------------------------------------------------------------- recorded sources


def _frames(source: str, n: int, **kwargs) -> tuple[list[np.ndarray], list[tuple[int, float]], object]:
    """Up to ``n`` images, (frame_index, timestamp) pairs and the source's ``frame_size`` at open."""
    with open_source("cam-c", source, max_frames=n, **kwargs) as src:
        size = src.frame_size
        frames = list(src)
    return [f.image for f in frames], [(f.frame_index, f.timestamp) for f in frames], size


@pytest.mark.parametrize("rel", [VTEST, MOT_IMG1])
@pytest.mark.parametrize(
    "crop",
    [
        (100, 50, 420, 400),  # interior
        (0, 0, 1, 1),  # one pixel, top left
        "whole",  # x2 = width, y2 = height: the whole frame
        "bottom-right",  # the last pixel
        "full-width",  # rows only: a slice that would be contiguous already, still copied
    ],
)
def test_cropped_frames_are_the_slice_of_the_uncropped_ones(rel, crop):
    source = str(shared_path(rel))
    w, h = SIZES[rel]
    crop = {
        "whole": (0, 0, w, h),
        "bottom-right": (w - 1, h - 1, w, h),
        "full-width": (0, h // 3, w, h // 2),
    }.get(crop, crop)
    x1, y1, x2, y2 = crop
    full, full_times, full_size = _frames(source, 5)
    cropped, times, size = _frames(source, 5, crop=crop)
    assert full_size == (w, h) and size == (x2 - x1, y2 - y1)
    assert times == full_times and len(cropped) == 5
    for image, whole in zip(cropped, full, strict=True):
        assert image.shape == (y2 - y1, x2 - x1, 3) and image.dtype == np.uint8
        # its own contiguous memory, not a view into the decoder's frame
        assert image.flags["C_CONTIGUOUS"] and image.flags["OWNDATA"]
        np.testing.assert_array_equal(image, whole[y1:y2, x1:x2])


@pytest.mark.parametrize("rel", [VTEST, MOT_IMG1])
def test_without_crop_frames_are_what_opencv_decodes(rel):
    path = shared_path(rel)
    images, _, size = _frames(str(path), 4)
    if path.is_dir():
        expected = [cv2.imread(str(p)) for p in sorted(path.glob("*.jpg"))[:4]]
    else:
        cap = cv2.VideoCapture(str(path))
        expected = [cap.read()[1] for _ in range(4)]
        cap.release()
    assert size == SIZES[rel] and len(images) == 4
    for image, want in zip(images, expected, strict=True):
        np.testing.assert_array_equal(image, want)
    with open_source("cam-c", str(path), max_frames=1) as src:
        assert src.crop is None


@pytest.mark.parametrize(
    ("halves", "join"),
    [
        (((0, 0, 384, 576), (384, 0, 768, 576)), np.hstack),  # left | right
        (((0, 0, 768, 288), (0, 288, 768, 576)), np.vstack),  # top / bottom
    ],
)
def test_two_cameras_on_one_file_reconstruct_the_frame(halves, join):
    source = str(shared_path(VTEST))
    full, full_times, _ = _frames(source, 6)
    a, a_times, _ = _frames(source, 6, crop=halves[0])
    b, b_times, _ = _frames(source, 6, crop=halves[1])
    assert a_times == b_times == full_times  # the same clock: frame i of each is frame i of the file
    for left, right, whole in zip(a, b, full, strict=True):
        np.testing.assert_array_equal(join([left, right]), whole)


@pytest.mark.parametrize("rel", [VTEST, MOT_IMG1])
@pytest.mark.parametrize(
    ("crop", "why"),
    [((0, 0, 2000, 100), "x2 2000 > width"), ((0, 0, 100, 2000), "y2 2000 > height")],
)
def test_crop_outside_the_frame_is_a_one_line_source_error(rel, crop, why):
    w, h = SIZES[rel]
    with pytest.raises(SourceError) as err:
        open_source("zone-7", str(shared_path(rel)), crop=crop)
    text = str(err.value)
    assert "\n" not in text and text.startswith("camera 'zone-7': ")
    assert f"crop [{', '.join(map(str, crop))}] does not fit the {w}x{h} frame" in text and why in text


@pytest.mark.parametrize("rel", [VTEST, MOT_IMG1])
@pytest.mark.parametrize("crop", [(10, 10, 10, 20), (0, 0, 5), (-1, 0, 5, 5)])
def test_invalid_crop_is_a_value_error_naming_the_camera(rel, crop):
    with pytest.raises(ValueError, match=r"^camera 'zone-7': crop: "):
        open_source("zone-7", str(shared_path(rel)), crop=crop)


def test_classes_take_the_crop_too():
    with VideoFileSource("v", shared_path(VTEST), crop=PETS_RIGHT, max_frames=1) as src:
        assert src.crop == PETS_RIGHT and next(src).image.shape == (576, 340, 3)
    with ImageFolderSource("i", shared_path(MOT_IMG1), crop=[0, 0, 64, 48], max_frames=1) as src:
        assert src.frame_size == (64, 48) and next(src).image.shape == (48, 64, 3)


def test_image_folder_skips_an_image_the_crop_does_not_fit(tmp_path):
    src_dir = shared_path(MOT_IMG1)
    folder = tmp_path / "img1"
    folder.mkdir()
    for p in sorted(src_dir.glob("*.jpg"))[:3]:
        shutil.copy(p, folder / p.name)
    small = folder / "000002.jpg"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(small)), (320, 240)))
    with open_source("cam-c", f"{folder}/", crop=(0, 0, 400, 300)) as src:
        frames = list(src)
        health = src.health
    assert [f.frame_index for f in frames] == [0, 2]
    assert all(f.image.shape == (300, 400, 3) for f in frames)
    assert health.last_error is not None
    assert "does not fit the 320x240 frame" in health.last_error and "000002.jpg" in health.last_error


# ------------------------------------------------------------------------------- boxes of a cropped view


def _gt(path: Path, frames: int) -> dict[int, list[tuple[int, float, float, float, float]]]:
    """``frame (0-based) -> [(person, x1, y1, x2, y2)]`` of a pets09-splitview ground-truth file."""
    out: dict[int, list[tuple[int, float, float, float, float]]] = {}
    for line in path.read_text().splitlines():
        f, person, x, y, w, h, _ = line.split(",")
        if int(f) <= frames:
            x1, y1 = float(x), float(y)
            out.setdefault(int(f) - 1, []).append((int(person), x1, y1, x1 + float(w), y1 + float(h)))
    return out


def test_tracklet_boxes_are_relative_to_the_cropped_view():
    """The camera `right` of data/pets09-splitview-dev is vtest.avi cropped to PETS_RIGHT, its ground truth in
    that camera's own pixels. Fed to the tracklet builder as detections and tracks (as the detector would see
    them on the cropped frames), the stored boxes are in the cropped view's pixels, and its crops are the
    pixels of the original frame at those boxes shifted by the crop's origin."""
    gt = _gt(shared_path("data/pets09-splitview-dev/gt_right.txt"), 8)
    builder = TrackletBuilder.from_config("right", TrackletConfig(min_length=4, max_crops=8), roi=None)
    with open_source("right", str(shared_path(VTEST)), crop=PETS_RIGHT, max_frames=8) as src:
        frames = list(src)
    closed = []
    for frame in frames:
        rows = gt.get(frame.frame_index, [])
        boxes = np.array([r[1:] for r in rows], np.float32).reshape(-1, 4)
        dets = Detections(boxes, np.full(len(rows), 0.9, np.float32), np.zeros(len(rows), np.int64))
        tracks = Tracks(
            np.array([r[0] for r in rows], np.int64), boxes, dets.scores, np.arange(len(rows), dtype=np.int64)
        )
        closed += builder.update(frame, dets, tracks)
    closed += builder.flush()
    assert sorted(t.track_id for t in closed) == sorted({r[0] for rows in gt.values() for r in rows})

    with open_source("full", str(shared_path(VTEST)), max_frames=8) as src:
        full = {f.frame_index: f.image for f in src}
    ox, oy = PETS_RIGHT[:2]
    checked = 0
    for t in closed:
        for f, box, crop in zip(t.frame_indices, t.boxes, t.crops, strict=True):
            (x1, y1, x2, y2) = next(r[1:] for r in gt[int(f)] if r[0] == t.track_id)
            want = [math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)]
            assert box.tolist() == want and box[2] <= 340  # cropped-view pixels, inside the 340 px view
            bx1, by1, bx2, by2 = (int(v) for v in box)
            patch = full[int(f)][by1 + oy : by2 + oy, bx1 + ox : bx2 + ox]
            np.testing.assert_array_equal(crop, cv2.resize(patch, (128, 256), interpolation=cv2.INTER_LINEAR))
            checked += 1
    assert checked >= 8
