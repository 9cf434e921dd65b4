"""Contract tests for every tracker in trackers.TRACKERS, through the public API only."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipeline.transport.messages import Detections, Tracks
from tests.conftest import REPO, shared_path
from trackers import TRACKERS, Tracker, build_tracker

NAMES = list(TRACKERS)
APPEARANCE = {"botsort", "strongsort", "deepocsort"}

# Three well separated people-sized boxes in a 384x288 frame, and the same three moved far away.
BOXES_A = np.array([[40, 60, 80, 170], [150, 100, 195, 230], [300, 20, 335, 110]], np.float32)
BOXES_B = np.array([[220, 150, 260, 270], [10, 10, 50, 110], [120, 5, 150, 90]], np.float32)


def dets(boxes: np.ndarray, scores=(0.9, 0.85, 0.8)) -> Detections:
    return Detections(boxes, np.asarray(scores[: len(boxes)], np.float32), np.zeros(len(boxes), np.int64))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """ReID inference on one thread: on 2 shared cores, 2 spinning torch threads ran ~15x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    """First vtest frame at half size: real texture for the ReID trackers, cheap camera-motion estimation."""
    cap = cv2.VideoCapture(str(shared_path("data/vtest/vtest.avi")))
    ok, image = cap.read()
    cap.release()
    assert ok
    return cv2.resize(image, (384, 288))


@pytest.fixture(scope="module")
def reid_weights():
    return shared_path("assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth")


def make(name: str, reid_weights, **kw) -> Tracker:
    return build_tracker(name, reid_weights=reid_weights, **kw)


def run(tracker: Tracker, sequence: list[Detections], frame: np.ndarray) -> list[Tracks]:
    return [tracker.update(d, frame) for d in sequence]


def signature(outputs: list[Tracks]) -> list[list[tuple]]:
    """Per frame, (det index, id in order of first appearance, rounded box): comparable across instances."""
    first_seen: dict[int, int] = {}
    sig = []
    for tracks in outputs:
        rows = []
        for k in np.argsort(tracks.det_indices, kind="stable"):
            tid = first_seen.setdefault(int(tracks.track_ids[k]), len(first_seen))
            rows.append((int(tracks.det_indices[k]), tid, tuple(np.round(tracks.boxes[k], 1).tolist())))
        sig.append(rows)
    return sig


def test_import_does_not_import_boxmot():
    code = "import sys, trackers; assert 'boxmot' not in sys.modules, 'boxmot imported eagerly'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.parametrize("name", ["", "nope", "ByteTrack", "strong_sort"])
def test_unknown_name_keyerror_lists_valid_names(name):
    with pytest.raises(KeyError) as err:
        build_tracker(name)
    for valid in NAMES:
        assert valid in str(err.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "params, word",
    [
        ({"no_such_param": 1}, "no_such_param"),
        ({"device": "cpu"}, "device"),
        ({"reid_weights": "x.pth"}, "reid_weights"),
        ({"frame_rate": 25}, "frame_rate"),
    ],
)
def test_bad_param_names_tracker_and_param(name, params, word):
    with pytest.raises(ValueError) as err:
        build_tracker(name, params=params)
    assert name in str(err.value) and word in str(err.value)


@pytest.mark.parametrize(
    "name, params",
    [
        ("bytetrack", {}),
        ("bytetrack", {"track_thresh": 0.5, "track_buffer": 10}),
        ("botsort", {"use_embeddings": False}),
        ("ocsort", {"min_hits": 1, "max_age": 5}),
        ("deepocsort", {"use_embeddings": False, "cmc_off": True}),
    ],
)
def test_valid_params_build_without_reid_weights(name, params, tmp_path):
    missing = tmp_path / "missing.pth"  # never read by these configurations
    assert isinstance(build_tracker(name, params=params, reid_weights=missing), Tracker)


@pytest.mark.parametrize("name", sorted(APPEARANCE))
def test_appearance_tracker_missing_reid_weights_names_path(name, tmp_path):
    missing = tmp_path / "missing_osnet.pth"
    with pytest.raises(FileNotFoundError, match="missing_osnet.pth"):
        build_tracker(name, reid_weights=missing)


def test_reid_weights_that_are_not_a_state_dict_are_refused(tmp_path):
    bad = tmp_path / "osnet_x0_25_bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="state dict"):
        build_tracker("strongsort", reid_weights=bad)


@pytest.mark.parametrize("name", NAMES)
def test_empty_frames_give_valid_empty_tracks(name, reid_weights, frame):
    tracker = make(name, reid_weights)
    assert isinstance(tracker, Tracker)
    for tracks in run(tracker, [Detections.empty()] * 3, frame):
        assert isinstance(tracks, Tracks) and len(tracks) == 0
    # Tracks exist, then the people vanish: still valid output on every empty frame.
    assert len(run(tracker, [dets(BOXES_A)] * 4, frame)[-1]) == 3
    for tracks in run(tracker, [Detections.empty()] * 3, frame):
        assert isinstance(tracks, Tracks) and len(tracks) == 0  # no detection for a track to point at


@pytest.mark.parametrize("name", NAMES)
def test_static_detections_get_stable_ids_and_valid_det_indices(name, reid_weights, frame):
    detections = dets(BOXES_A)
    outputs = run(make(name, reid_weights), [detections] * 8, frame)
    id_of: dict[int, int] = {}  # det index -> track id once confirmed
    for tracks in outputs:
        assert len(np.unique(tracks.track_ids)) == len(tracks)
        assert np.all((tracks.det_indices >= 0) & (tracks.det_indices < len(detections)))
        assert np.all(tracks.track_ids > 0)
        for tid, idx, box in zip(tracks.track_ids, tracks.det_indices, tracks.boxes, strict=True):
            assert iou(box, detections.boxes[idx]) > 0.9
            assert id_of.setdefault(int(idx), int(tid)) == tid, "id changed for an unchanged detection"
    for idx in range(len(detections)):  # once confirmed, tracked on every later frame
        first = next(f for f, t in enumerate(outputs) if idx in t.det_indices)
        assert first <= 3
        assert all(idx in t.det_indices for t in outputs[first:])
    assert len(set(id_of.values())) == len(detections)


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_boxes_are_skipped_and_indices_still_point_at_the_input(name, reid_weights, frame):
    boxes = np.array([BOXES_A[0], [200, 50, 200, 120], BOXES_A[2]], np.float32)  # row 1 has zero width
    detections = dets(boxes)
    outputs = run(make(name, reid_weights), [detections] * 4, frame)
    assert {int(i) for i in outputs[-1].det_indices} == {0, 2}
    for idx, box in zip(outputs[-1].det_indices, outputs[-1].boxes, strict=True):
        assert iou(box, boxes[idx]) > 0.9


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("after", ["same_place", "moved"])
def test_reset_forgets_state_and_never_reuses_ids(name, after, reid_weights, frame):
    """After reset() the tracker behaves exactly like a fresh one, except that ids are new."""
    second = dets(BOXES_A if after == "same_place" else BOXES_B)
    tracker = make(name, reid_weights)
    before = run(tracker, [dets(BOXES_A)] * 4, frame)
    tracker.reset()
    after_reset = run(tracker, [second] * 4, frame)
    fresh = run(make(name, reid_weights), [second] * 4, frame)
    assert signature(after_reset) == signature(fresh)
    old_ids = {int(i) for t in before for i in t.track_ids}
    new_ids = {int(i) for t in after_reset for i in t.track_ids}
    assert old_ids and new_ids and old_ids.isdisjoint(new_ids)


@pytest.mark.parametrize("name", ["bytetrack", "ocsort"])
def test_reset_before_any_update_is_harmless(name, reid_weights, frame):
    tracker = make(name, reid_weights)
    tracker.reset()
    sequence = [Detections.empty()] + [dets(BOXES_A)] * 4
    assert signature(run(tracker, sequence, frame)) == signature(
        run(make(name, reid_weights), sequence, frame)
    )


@pytest.mark.parametrize("name", NAMES)
def test_instances_do_not_share_ids_or_state(name, reid_weights, frame):
    a, b, idle = (make(name, reid_weights) for _ in range(3))
    out_a, out_b = [], []
    for _ in range(5):  # interleaved: a shared id counter would give b different ids than a
        out_a.append(a.update(dets(BOXES_A), frame))
        out_b.append(b.update(dets(BOXES_A), frame))
        assert len(idle.update(Detections.empty(), frame)) == 0
    assert len(out_a[-1]) == 3
    for ta, tb in zip(out_a, out_b, strict=True):
        np.testing.assert_array_equal(ta.track_ids, tb.track_ids)
        np.testing.assert_array_equal(ta.det_indices, tb.det_indices)
    # The idle instance starts its own numbering, untouched by the others.
    first = run(idle, [dets(BOXES_A)] * 5, frame)
    assert sorted(first[-1].track_ids.tolist()) == sorted(out_a[-1].track_ids.tolist())


@pytest.fixture(scope="module")
def vtest_detections():
    """Six consecutive vtest frames (every 2nd of 0..10) and their detections from the shared OpenVINO model."""
    weights = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    cap = cv2.VideoCapture(str(shared_path("data/vtest/vtest.avi")))
    frames = []
    for i in range(11):
        ok, image = cap.read()
        assert ok
        if i % 2 == 0:
            frames.append(image)
    cap.release()
    from pipeline.camera.detector import PersonDetector
    from pipeline.config import DetectorConfig

    detector = PersonDetector.from_config(DetectorConfig(weights=str(weights), device="cpu"))
    return frames, detector.detect(frames)


@pytest.mark.parametrize("name", NAMES)
def test_integration_with_real_detections(name, reid_weights, vtest_detections):
    frames, all_dets = vtest_detections
    tracker = make(name, reid_weights)
    outputs = [tracker.update(d, f) for d, f in zip(all_dets, frames, strict=True)]
    for tracks, detections in zip(outputs, all_dets, strict=True):
        assert np.all((tracks.det_indices >= 0) & (tracks.det_indices < len(detections)))
        assert len(np.unique(tracks.det_indices)) == len(tracks)
        for box, idx in zip(tracks.boxes, tracks.det_indices, strict=True):
            assert iou(box, detections.boxes[idx]) > 0.5
    last, prev = outputs[-1], outputs[-2]
    assert len(last) >= 2, f"{name} confirmed {len(last)} tracks on {len(all_dets[-1])} detections"
    # Walkers move a few pixels between frames: most tracks of the previous frame keep their id.
    assert len(set(prev.track_ids.tolist()) & set(last.track_ids.tolist())) >= min(len(prev), len(last)) - 1
