"""Adapter from boxmot 25 trackers to the pipeline's tracker contract.

boxmot's NumPy interface takes ``(N, 6)`` rows ``[x1, y1, x2, y2, score, class]`` plus the BGR frame and
returns ``(M, 8)`` rows ``[x1, y1, x2, y2, track_id, score, class, det_ind]`` (``boxmot.trackers.common.input.
pack_numpy_track_rows``). :class:`BoxmotTracker` converts both ways so only
:class:`~pipeline.transport.messages.Detections` and :class:`~pipeline.transport.messages.Tracks` cross the module boundary.

Appearance (ReID) for botsort, strongsort and deepocsort: boxmot would build its own backend from
``reid_weights``, but boxmot 25 only accepts ``.pt``/``.onnx``/OpenVINO/... names there (``.pth`` is
rejected), downloads a ``.pt`` that is missing, and ``pip install``-s a missing ONNX runtime. So the adapter
builds boxmot's PyTorch OSNet backend itself from a local torch state dict (``.pth`` or ``.pt``) and hands it
over as ``reid_model``; boxmot then never resolves, downloads or installs anything. boxmot unpickles that file
with ``weights_only=False``, so it is first opened here with ``weights_only=True``: a file that is not a plain
tensor state dict is refused before boxmot sees it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.transport.messages import Detections, Tracks

__all__ = ["DEFAULT_REID_WEIGHTS", "BoxmotSpec", "BoxmotTracker", "load_reid_backend"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REID_WEIGHTS = (
    REPO_ROOT.parent / "shared" / "assets" / "reid" / "osnet_x0_25" / "osnet_x0_25_msmt17.pth"
)

# Constructor arguments the adapter owns: ReID comes from build_tracker(reid_weights=, device=), the frame rate
# from build_tracker(frame_rate=), and the pipeline only tracks axis-aligned boxes.
_RESERVED = {
    "reid_model": "use build_tracker(reid_weights=...)",
    "reid_weights": "use build_tracker(reid_weights=...)",
    "reid_preprocess": "the preprocessing follows the weights",
    "device": "use build_tracker(device=...)",
    "half": "the ReID model runs in float32",
    "frame_rate": "use build_tracker(frame_rate=...)",
    "is_obb": "the pipeline tracks axis-aligned boxes only",
    "variable_dt": "it needs per-update timestamps, which the contract does not carry",
}


@dataclass(frozen=True)
class BoxmotSpec:
    """How to build one boxmot tracker.

    ``class_path`` is the dotted path of the boxmot class, imported only when a tracker is built.
    ``appearance`` says whether it needs a ReID model: ``"none"``, ``"optional"`` (switched off with the
    boxmot parameter ``use_embeddings=False``) or ``"required"``. ``takes_frame_rate`` says whether the
    class scales its lost-track buffer by a ``frame_rate`` argument.
    """

    class_path: str
    appearance: Literal["none", "optional", "required"] = "none"
    takes_frame_rate: bool = False

    def load_class(self) -> type:
        module, _, cls = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), cls)

    def param_names(self) -> frozenset[str]:
        """Keyword arguments the boxmot class accepts (its own and those it forwards to its bases)."""
        names: set[str] = set()
        for klass in self.load_class().__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names.update(
                p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            )
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return frozenset(names - _RESERVED.keys())


@functools.lru_cache(maxsize=4)
def load_reid_backend(weights: Path, device: str = "cpu") -> Any:
    """boxmot's PyTorch ReID backend (OSNet etc., architecture read from the file name) for a local state dict.

    ``weights`` must be an existing ``.pth``/``.pt`` torch state dict. The backend is stateless at inference,
    so one instance per (file, device) is cached and shared by every tracker in the process.
    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` for anything that is not a plain
    state dict of tensors.
    """
    import torch

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"ReID weights not found: {path}")
    if path.suffix.lower() not in (".pth", ".pt"):
        raise ValueError(f"ReID weights {path}: expected a torch state dict (.pth or .pt)")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"ReID weights {path} are not a plain tensor state dict: {exc}") from exc

    from boxmot.reid.backends.pytorch_backend import PyTorchBackend

    return PyTorchBackend(path, torch.device(device), False)


class BoxmotTracker:
    """One boxmot tracker for one camera, speaking :class:`Detections` in and :class:`Tracks` out.

    Built by :func:`trackers.build_tracker`; see there for the arguments. Track ids are positive, unique within
    this instance, and never reused, not even after :meth:`reset` (boxmot restarts its own ids at 0 on reset,
    which would collide with earlier tracklets under the same ``(camera_id, track_id)`` key).
    """

    def __init__(
        self,
        name: str,
        spec: BoxmotSpec,
        *,
        params: Mapping[str, Any] | None = None,
        device: str = "cpu",
        reid_weights: Path | None = None,
        frame_rate: int = 30,
    ) -> None:
        params = dict(params or {})
        accepted = spec.param_names()
        for key in params:
            if key in _RESERVED:
                raise ValueError(
                    f"tracker {name!r}: parameter {key!r} is not accepted here, {_RESERVED[key]}"
                )
            if key not in accepted:
                raise ValueError(
                    f"tracker {name!r} has no parameter {key!r}; valid parameters: {', '.join(sorted(accepted))}"
                )
        if frame_rate <= 0:
            raise ValueError(f"tracker {name!r}: frame_rate must be positive, got {frame_rate}")

        kwargs = dict(params)
        if spec.takes_frame_rate:
            kwargs["frame_rate"] = int(frame_rate)
        uses_appearance = spec.appearance == "required" or (
            spec.appearance == "optional" and params.get("use_embeddings", True)
        )
        if uses_appearance:
            weights = Path(reid_weights) if reid_weights is not None else DEFAULT_REID_WEIGHTS
            if not weights.is_file():
                hint = " or pass params={'use_embeddings': False}" if spec.appearance == "optional" else ""
                raise FileNotFoundError(
                    f"tracker {name!r} needs ReID weights, not found: {weights} (give reid_weights=<.pth>{hint})"
                )
            kwargs["reid_model"] = load_reid_backend(weights.resolve(), device)

        self.name = name
        self._cls = spec.load_class()
        self._kwargs = kwargs
        try:
            self._tracker = self._cls(**kwargs)
        except TypeError as exc:  # wrong keyword or type for boxmot; say which tracker
            raise ValueError(f"tracker {name!r}: {exc}") from exc
        self._ids: dict[int, int] = {}  # boxmot id -> our id, for the current sequence
        self._next_id = 1

    def update(self, detections: Detections, frame: np.ndarray) -> Tracks:
        """Advance one frame: ``detections`` of this frame (possibly empty) and its (H, W, 3) uint8 BGR image.

        Returns the tracks boxmot reports for this frame, each matched to a detection of this frame:
        ``det_indices`` index ``detections``. Degenerate boxes (zero width or height) are not passed to
        boxmot, which refuses them; they never appear in ``det_indices``.
        """
        dets = detections.as_array()
        valid = np.flatnonzero((dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1]))
        rows = np.asarray(self._tracker.update(dets[valid], frame))  # (M, 8), see module docstring
        det_ind = rows[:, 7].astype(np.int64)
        rows, det_ind = rows[det_ind >= 0], det_ind[det_ind >= 0]  # -1: boxmot's "no detection this frame"
        if len(rows) == 0:
            return Tracks.empty()
        return Tracks(
            track_ids=np.array([self._our_id(int(i)) for i in rows[:, 4]], np.int64),
            boxes=rows[:, :4],
            scores=rows[:, 5],
            det_indices=valid[det_ind],
        )

    def _our_id(self, boxmot_id: int) -> int:
        our = self._ids.get(boxmot_id)
        if our is None:
            our = self._ids[boxmot_id] = self._next_id
            self._next_id += 1
        return our

    def reset(self) -> None:
        """Forget every track (start of a new sequence); ids issued so far are not reused."""
        reset = getattr(self._tracker, "reset", None)
        if callable(reset):
            reset()
        else:
            self._tracker = self._cls(**self._kwargs)
        self._ids.clear()

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._kwargs.items() if k != "reid_model"}
        return f"BoxmotTracker({self.name!r}, {self._cls.__name__}, {shown})"
