"""Multi-object trackers behind one contract, listed in one explicit dict.

Contract (:class:`Tracker`): one instance per camera; call ``update(detections, frame)`` on every frame, also
when there are no detections, and ``reset()`` at the start of a new sequence. Each output track carries the
index of the detection of the same frame it was matched to, so the tracklet builder crops the detected box.
Track ids are unique per instance (per camera); a global key is ``(camera_id, track_id)``.

The plug-ins are boxmot trackers (imported only when one is built) wrapped by
:class:`trackers.boxmot_adapter.BoxmotTracker`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.transport.messages import Detections, Tracks
from trackers.boxmot_adapter import DEFAULT_REID_WEIGHTS, BoxmotSpec, BoxmotTracker

__all__ = ["DEFAULT_REID_WEIGHTS", "TRACKERS", "Tracker", "build_tracker"]


@runtime_checkable
class Tracker(Protocol):
    """What the camera worker needs from a tracker."""

    def update(self, detections: Detections, frame: np.ndarray) -> Tracks:
        """Advance one frame: its detections (possibly empty) and its (H, W, 3) uint8 BGR image.

        Returns the tracks reported for this frame; ``Tracks.det_indices`` index ``detections``.
        """
        ...

    def reset(self) -> None:
        """Forget all tracks; the next ``update`` starts a new sequence. Ids are not reused."""
        ...


_BOX = "boxmot.trackers.box"

TRACKERS: dict[str, BoxmotSpec] = {
    "bytetrack": BoxmotSpec(f"{_BOX}.bytetrack.tracker.ByteTrack", takes_frame_rate=True),
    "botsort": BoxmotSpec(f"{_BOX}.botsort.tracker.BotSort", appearance="optional", takes_frame_rate=True),
    "ocsort": BoxmotSpec(f"{_BOX}.ocsort.tracker.OcSort"),
    "strongsort": BoxmotSpec(f"{_BOX}.strongsort.tracker.StrongSort", appearance="required"),
    "deepocsort": BoxmotSpec(f"{_BOX}.deepocsort.tracker.DeepOcSort", appearance="optional"),
}


def build_tracker(
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
    reid_weights: Path | None = None,
    frame_rate: int = 30,
) -> Tracker:
    """Build a fresh tracker for one camera.

    ``name`` is a key of :data:`TRACKERS`. ``params`` are the boxmot constructor arguments of that tracker
    (e.g. ``{"track_thresh": 0.5}`` for bytetrack); boxmot's class defaults apply to the rest. ``device`` runs
    the ReID model of appearance trackers. ``reid_weights`` is a local torch state dict (``.pth``/``.pt``) of a
    boxmot ReID architecture named in the file name, e.g. ``osnet_x0_25_msmt17.pth``; ``None`` means
    :data:`DEFAULT_REID_WEIGHTS` (the team's shared OSNet x0.25 MSMT17 file next to the repository). It is only
    read by botsort, strongsort and deepocsort, and not by botsort/deepocsort with
    ``params={"use_embeddings": False}``. ``frame_rate`` (fps) scales the lost-track buffer of bytetrack
    and botsort; the other trackers count frames.

    Raises ``KeyError`` listing the valid names for an unknown ``name``; ``ValueError`` naming the tracker and
    the parameter for an unknown or reserved parameter; ``FileNotFoundError`` when needed ReID weights are
    missing. Nothing is downloaded.
    """
    spec = TRACKERS.get(name)
    if spec is None:
        raise KeyError(f"unknown tracker {name!r}; valid names: {', '.join(TRACKERS)}")
    return BoxmotTracker(
        name, spec, params=params, device=device, reid_weights=reid_weights, frame_rate=frame_rate
    )
