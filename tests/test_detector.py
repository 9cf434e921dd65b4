"""PersonDetector on the shared offline OpenVINO YOLO11n and vtest.avi; failure modes without any network.

The ``.pt`` and ONNX routes are checked for plumbing only, with an untrained YOLO11n built from ultralytics'
own yaml (and exported to ONNX by ultralytics): the only trained YOLO weights here are the OpenVINO IR.
"""

from __future__ import annotations

import os
import sys
import time

import cv2
import numpy as np
import pytest

from pipeline.camera.detector import DetectorError, PersonDetector
from pipeline.config import ConfigError, DetectorConfig
from pipeline.transport.messages import Detections
from tests.conftest import shared_path

OPENVINO_WEIGHTS = "assets/detectors/yolo11n_int8_openvino_model"


def make_detector(weights, **settings) -> PersonDetector:
    """A CPU detector with the schema's defaults but ``settings`` (validated by :class:`DetectorConfig`)."""
    return PersonDetector.from_config(DetectorConfig(weights=str(weights), **{"device": "cpu", **settings}))


@pytest.fixture(scope="module")
def detector() -> PersonDetector:
    return make_detector(shared_path(OPENVINO_WEIGHTS))


@pytest.fixture(scope="module")
def vtest_frames() -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(shared_path("data/vtest/vtest.avi")))
    frames = {}
    for i in range(101):
        ok, image = cap.read()
        assert ok, f"vtest.avi ended before frame {i}"
        if i in (0, 50, 100):
            frames[i] = image
    cap.release()
    return frames


@pytest.mark.parametrize("index", [0, 100])
def test_openvino_finds_plausible_persons_inside_the_frame(detector, vtest_frames, index):
    image = vtest_frames[index]
    det = detector.detect_one(image)
    assert isinstance(det, Detections)
    assert 3 <= len(det) <= 12, f"frame {index}: {len(det)} persons (README: ~6 per frame at conf 0.25)"
    h, w = image.shape[:2]
    assert np.all(det.boxes[:, [0, 1]] >= 0) and np.all(det.boxes[:, 2] <= w) and np.all(det.boxes[:, 3] <= h)
    assert np.all(det.boxes[:, 2] > det.boxes[:, 0]) and np.all(det.boxes[:, 3] > det.boxes[:, 1])
    assert set(det.class_ids.tolist()) == {0}
    assert np.all(det.scores >= detector.conf) and np.all(det.scores <= 1)


def test_static_openvino_export_is_fed_one_frame_per_call(detector):
    assert detector.max_batch == 1  # metadata: dynamic false, batch 1


def test_batch_equals_single_calls(detector, vtest_frames):
    frames = [vtest_frames[i] for i in (0, 50, 100)]
    batched = detector.detect(frames)
    assert len(batched) == 3
    for image, det in zip(frames, batched, strict=True):
        single = detector.detect_one(image)
        np.testing.assert_allclose(det.boxes, single.boxes, atol=1e-3)
        np.testing.assert_allclose(det.scores, single.scores, atol=1e-5)
        np.testing.assert_array_equal(det.class_ids, single.class_ids)


@pytest.mark.parametrize("shape", [(576, 768, 3), (240, 320, 3), (640, 640, 3)])
def test_blank_frame_gives_empty_detections(detector, shape):
    det = detector.detect_one(np.zeros(shape, np.uint8))
    assert len(det) == 0 and det.boxes.shape == (0, 4)


def test_no_images_gives_no_detections(detector):
    assert detector.detect([]) == []


def test_mixed_frame_sizes_in_one_call(detector, vtest_frames):
    small = cv2.resize(vtest_frames[100], (384, 288))
    big, half = detector.detect([vtest_frames[100], small])
    assert np.all(half.boxes[:, 2] <= 384) and np.all(half.boxes[:, 3] <= 288)
    assert abs(len(big) - len(half)) <= 3


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64, 4), np.uint8),
        "x.jpg",
    ],
    ids=["gray", "float", "rgba", "path"],
)
def test_bad_image_is_refused(detector, image):
    with pytest.raises(DetectorError, match=r"images\[0\]"):
        detector.detect([image])


def test_pytorch_weights_route_batches_dynamically(tmp_path):
    os.environ.setdefault("YOLO_OFFLINE", "1")  # before ultralytics is imported by this test
    from ultralytics import YOLO

    weights = tmp_path / "yolo11n_untrained.pt"
    YOLO("yolo11n.yaml", task="detect").save(weights)  # architecture from the package, random weights
    detector = make_detector(weights, batch=2)
    assert detector.format == "pt" and detector.max_batch == 2
    images = [np.full((288, 384, 3), v, np.uint8) for v in (0, 128, 255)]
    out = detector.detect(images)
    assert len(out) == 3 and all(isinstance(d, Detections) for d in out)
    assert all(set(d.class_ids.tolist()) <= {0} for d in out)


def test_onnx_export_route_runs(tmp_path, monkeypatch):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)  # the export is written next to the (yaml-built) model, i.e. here
    onnx_path = YOLO("yolo11n.yaml", task="detect").export(
        format="onnx", imgsz=320, dynamic=True, simplify=False
    )
    detector = make_detector(onnx_path, imgsz=320, batch=2)
    assert detector.format == "onnx"
    out = detector.detect([np.full((240, 320, 3), v, np.uint8) for v in (0, 200)])
    assert len(out) == 2 and all(isinstance(d, Detections) for d in out)
    assert all(set(d.class_ids.tolist()) <= {0} for d in out)


@pytest.mark.parametrize(
    "weights, expected",
    [
        ("yolo11n.pt", "not available offline"),  # a hub name ultralytics would otherwise download
        ("yolov8s.onnx", "not available offline"),
        ("/nonexistent/dir/best.pt", "not found: /nonexistent/dir/best.pt"),
        ("models/x_openvino_model", "not found"),
    ],
)
def test_missing_weights_fail_fast_without_network(weights, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so a bare name cannot be satisfied by a stray file
    start = time.monotonic()
    with pytest.raises(DetectorError, match=expected) as err:
        make_detector(weights)
    assert time.monotonic() - start < 2.0
    assert "\n" not in str(err.value)


def test_unsupported_format_is_refused(tmp_path):
    weights = tmp_path / "model.tflite"
    weights.write_bytes(b"\0")
    with pytest.raises(DetectorError, match="unsupported"):
        make_detector(weights)


@pytest.mark.parametrize(
    "name, module",
    [("weights_openvino_model", "openvino"), ("weights.onnx", "onnxruntime")],
)
def test_missing_runtime_package_is_a_clear_error(name, module, tmp_path, monkeypatch):
    weights = tmp_path / name
    if name.endswith("_openvino_model"):
        weights.mkdir()
    else:
        weights.write_bytes(b"\0")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail as if it were not installed
    with pytest.raises(DetectorError, match=f"'{module}' package is not installed"):
        make_detector(weights)


@pytest.mark.parametrize(
    "key, value",
    [
        ("conf", 1.5),
        ("conf", -0.1),
        ("iou", 0.0),
        ("batch", 0),
        ("imgsz", 0),
        ("classes", ()),
        ("classes", (-1,)),
    ],
)
def test_bad_settings_are_one_line_config_errors_naming_the_key(key, value):
    """The detector's value rules are the schema's: a bad value never reaches the model."""
    with pytest.raises(ConfigError) as err:
        DetectorConfig(**{key: value})
    message = str(err.value)
    assert message.startswith(f"DetectorConfig: {key}") and "\n" not in message


def test_from_config_passes_every_setting(detector):
    section = DetectorConfig()
    assert (detector.imgsz, detector.conf, detector.iou, detector.classes) == (
        section.imgsz,
        section.conf,
        section.iou,
        section.classes,
    )
    assert detector.device == "cpu" and detector.format == "openvino"


def test_default_config_builds_a_detector_on_an_existing_model():
    """``detector.weights`` left out: the shared OpenVINO YOLO11n, which loads and detects."""
    from pipeline.camera.stage import build_detector
    from pipeline.config import CameraConfig, PipelineConfig

    shared_path(OPENVINO_WEIGHTS)  # skips with the reason when ../shared is absent
    detector = build_detector(PipelineConfig(cameras=[CameraConfig(id="c", source="a.mp4")]), device="cpu")
    assert detector.format == "openvino" and detector.weights.name == "yolo11n_int8_openvino_model"
    assert detector.detect_one(np.zeros((480, 640, 3), np.uint8)).boxes.shape == (0, 4)
