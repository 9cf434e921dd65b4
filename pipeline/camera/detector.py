"""Person detector stage: BGR frames in, :class:`~pipeline.transport.messages.Detections` out.

A thin wrapper around ``ultralytics.YOLO(weights, task="detect")`` that runs PyTorch (``.pt``), TorchScript,
ONNX and OpenVINO (``*_openvino_model/``) weights, batches frames from several cameras into one call, and
never downloads anything: the weights must be on disk and the runtime for their format installed, otherwise
construction fails at once with a one-line :class:`DetectorError`. Ultralytics itself would fetch a missing
bare model name from its hub and ``pip install`` a missing runtime; both are checked here first.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.transport.messages import Detections

if TYPE_CHECKING:
    from pipeline.config import DetectorConfig

__all__ = ["DetectorError", "PersonDetector"]

# Export formats this wrapper hands to ultralytics, with the Python module each one needs at run time.
_RUNTIME_MODULE = {"pt": None, "torchscript": None, "onnx": "onnxruntime", "openvino": "openvino"}
_FORMATS_HELP = "a .pt, .torchscript or .onnx file or a *_openvino_model folder"


class DetectorError(ValueError):
    """The detector cannot be built or fed as asked (missing weights, missing runtime, bad argument)."""


def _weights_format(path: Path) -> tuple[Path, str]:
    """Return ``(path ultralytics should load, format)``; an ``.xml`` inside an OpenVINO folder means the folder."""
    name = path.name.lower()
    if path.suffix.lower() == ".xml" and path.parent.name.lower().endswith("_openvino_model"):
        return path.parent, "openvino"
    if path.is_dir() and name.endswith("_openvino_model"):
        return path, "openvino"
    suffix = path.suffix.lower().lstrip(".")
    if path.is_file() and suffix in ("pt", "torchscript", "onnx"):
        return path, suffix
    raise DetectorError(f"unsupported detector weights {path}: expected {_FORMATS_HELP}")


def _check_runtime(fmt: str, path: Path) -> None:
    """Fail with a DetectorError when the runtime package for ``fmt`` is not importable."""
    module = _RUNTIME_MODULE[fmt]
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise DetectorError(
            f"detector weights {path} are {fmt} but the '{module}' package is not installed "
            f"(nothing is installed at run time; install it or give {_FORMATS_HELP} whose runtime is present)"
        ) from exc


def _resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda:0"`` when CUDA is usable, else ``"cpu"``; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _check_image(i: int, image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", None)
        raise DetectorError(f"images[{i}]: expected (H, W, 3) uint8 BGR, got {got}")
    return image


class PersonDetector:
    """Detect persons in BGR frames with an ultralytics YOLO model, CPU or GPU, batched.

    ``weights`` is a local path; bare hub names such as ``"yolo11n.pt"`` are only accepted when that file exists
    in the working directory. ``imgsz`` is the square inference size (exports with a static shape override it
    with their own). ``conf`` and ``iou`` are the score and NMS thresholds, ``classes`` the model class ids kept
    (COCO person is 0). ``device`` is ``"auto"``, ``"cpu"``, ``"cuda:0"``... ``batch`` is the most frames sent
    to the model in one inference call; exports with a static batch (the shared OpenVINO model has batch 1) are
    fed in chunks of their own batch size instead, see :attr:`max_batch`.

    Every argument is required: the defaults and the value ranges (``conf`` in [0, 1], ``iou`` in (0, 1],
    ``imgsz`` a positive multiple of 32, ``batch`` >= 1, non-empty non-negative ``classes``) are
    :class:`~pipeline.config.DetectorConfig`'s, which validates them; build from one with :meth:`from_config`.

    Construction loads the model and runs one blank frame through it, so every load problem surfaces here.
    Raises :class:`DetectorError` for missing weights, an unsupported format or a missing runtime package.
    """

    def __init__(
        self,
        weights: str | Path,
        *,
        imgsz: int,
        conf: float,
        iou: float,
        device: str,
        classes: Sequence[int],
        batch: int,
    ) -> None:
        path = Path(weights).expanduser()
        if not path.exists():
            if path.parent == Path(".") and not path.is_absolute():
                raise DetectorError(
                    f"detector weights '{weights}' are not available offline: no such file in {Path.cwd()} "
                    f"and models are never downloaded; give the path to {_FORMATS_HELP}"
                )
            raise DetectorError(f"detector weights not found: {path}")
        path, fmt = _weights_format(path)
        _check_runtime(fmt, path)

        # Ultralytics decides at import time whether it is online; with this set it never tries the network
        # (hub downloads, auto-installing packages, analytics). The composition root should set it as well.
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        self.weights = path
        self.format = fmt
        self.imgsz = int(imgsz)
        self.conf = float(conf)
        self.iou = float(iou)
        self.device = _resolve_device(device)
        self.classes = tuple(int(c) for c in classes)
        self._batch = int(batch)
        self._model = YOLO(str(path), task="detect")

        # Warm-up: loads and compiles the backend now, and tells whether its input batch is fixed.
        self._predict([np.zeros((self.imgsz, self.imgsz, 3), np.uint8)])
        backend = self._model.predictor.model
        dynamic = fmt in ("pt", "torchscript") or bool(backend.metadata.get("dynamic"))
        self._chunk = self._batch if dynamic else max(1, min(self._batch, int(getattr(backend, "batch", 1))))

    @classmethod
    def from_config(
        cls, section: DetectorConfig, *, weights: str | Path | None = None, device: str | None = None
    ) -> PersonDetector:
        """A detector with the settings of a validated ``detector:`` section. ``weights`` replaces the
        section's (e.g. the path :func:`models.samples.resolve_sample` found for it), ``device`` its device
        (e.g. a command-line ``--device``); ``None`` keeps the section's."""
        return cls(
            section.weights if weights is None else weights,
            imgsz=section.imgsz,
            conf=section.conf,
            iou=section.iou,
            device=section.device if device is None else device,
            classes=section.classes,
            batch=section.batch,
        )

    @property
    def max_batch(self) -> int:
        """Frames per inference call: ``batch``, or less when the export has a static batch size."""
        return self._chunk

    def _predict(self, images: list[np.ndarray]) -> list:
        return self._model.predict(
            images,
            imgsz=self.imgsz,
            conf=self.conf,
            iou=self.iou,
            classes=list(self.classes),
            device=self.device,
            batch=len(images),
            verbose=False,
        )

    def _to_detections(self, result) -> Detections:
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return Detections.empty()
        class_ids = boxes.cls.cpu().numpy().astype(np.int64)
        keep = np.isin(class_ids, self.classes)
        return Detections(
            boxes=boxes.xyxy.cpu().numpy()[keep],
            scores=boxes.conf.cpu().numpy()[keep],
            class_ids=class_ids[keep],
        )

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in each (H, W, 3) uint8 BGR image; frames may differ in size (e.g. several cameras).

        Returns one :class:`Detections` per image, in order, with boxes xyxy in that image's pixels, clipped
        to it, and only the configured classes. An empty sequence gives an empty list.
        """
        frames = [_check_image(i, im) for i, im in enumerate(images)]
        out: list[Detections] = []
        for start in range(0, len(frames), self._chunk):
            out.extend(self._to_detections(r) for r in self._predict(frames[start : start + self._chunk]))
        return out

    def detect_one(self, image: np.ndarray) -> Detections:
        """:meth:`detect` for a single image."""
        return self.detect([image])[0]

    def __repr__(self) -> str:
        return (
            f"PersonDetector(weights={str(self.weights)!r}, format={self.format!r}, imgsz={self.imgsz}, "
            f"conf={self.conf}, iou={self.iou}, device={self.device!r}, classes={self.classes}, "
            f"max_batch={self._chunk})"
        )
