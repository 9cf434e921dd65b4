"""The ``cams.yaml`` schema: one tree of frozen dataclass sections, every default and every rule written once.

Loading, overrides and error messages are :mod:`common.config_loader`'s; this module only says what the
keys are, their defaults and their rules. Components take required keyword arguments (the detector, the
tracklet builder and the re-ID encoder have a ``from_config`` beside them) and are given these values by the
composition root, so a bad value is a one-line :class:`~common.config_loader.ConfigError` naming its key,
never a crash in a component.

Path conventions: relative paths in ``cameras[].source``, ``reid.checkpoint`` and ``reid.backbone_weights``
are resolved relative to the directory of the YAML file; so is ``detector.weights`` when it contains a ``/``.
Paths given with ``--set`` are resolved relative to the current working directory, as the shell would complete
them. ``~`` is expanded. URLs and webcam indices are never touched. ``db.url`` is handed to SQLAlchemy
unchanged, so a relative SQLite path there is relative to the working directory. ``${NAME}`` in
``queue.redis_url``, ``db.url`` and ``cameras[].source`` is replaced by the environment variable ``NAME``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from common.config_loader import (
    URL_SCHEME,
    WORD,
    ConfigError,
    Section,
    check_between,
    check_device,
    check_min,
    need,
    show,
)
from pipeline.camera.crop import check_crop
from pipeline.camera.source_kind import SourceKind, source_kind

__all__ = [
    "DEFAULT_DETECTOR_WEIGHTS",
    "CameraConfig",
    "DBConfig",
    "DetectorConfig",
    "LiveConfig",
    "MatcherConfig",
    "PipelineConfig",
    "PrivacyConfig",
    "QueueConfig",
    "ReIDConfig",
    "ReplayConfig",
    "RetentionConfig",
    "TopologyConfig",
    "TopologyLink",
    "TrackerConfig",
    "TrackletConfig",
]

_GROUP = re.compile(r"[A-Za-z0-9_.:-]+")

# The team's offline INT8 OpenVINO export of YOLO11n in ../shared next to the repository. A user without
# ../shared gets it from its public source through models.samples.resolve_sample (sha256-checked, cached).
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DETECTOR_WEIGHTS = str(_REPO_ROOT.parent / "shared/assets/detectors/yolo11n_int8_openvino_model")


def _check_group(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    need(
        bool(_GROUP.fullmatch(value)),
        name,
        f"must be non-empty and use only letters, digits and _ . : -, got {show(value)}",
    )


def _is_recorded_source(value: str) -> bool:
    """A ``source`` that is a file or a folder (resolved as a path), not a URL or a webcam index."""
    try:
        return source_kind(value) in ("file", "images")
    except ValueError:
        return False  # an unsupported scheme: reported by CameraConfig's check


def _is_weights_path(value: str) -> bool:
    """``detector.weights`` with a folder part is a path; a bare name (``yolo11n.pt``) stays as it is."""
    return "/" in value or os.sep in value or value.startswith("~")


def _always(value: str) -> bool:
    return True


def _webcam_index(value: Any) -> Any:
    """``source: 0`` in YAML is webcam 0: normalise a non-negative int to its digit string."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 10_000:
            raise ConfigError(f"a webcam index must be between 0 and 9999, got {show(value)}")
        return str(value)
    return value


def _auto_threshold(value: Any) -> Any:
    """``matcher.threshold: auto`` is stored as ``None``: the threshold the checkpoint records."""
    return None if value == "auto" else value


def _auto_flag(value: Any) -> Any:
    """``auto`` is stored as ``None``: decided by what the checkpoint records."""
    return None if value == "auto" else value


@dataclass(frozen=True, kw_only=True, repr=False)
class CameraConfig(Section):
    """One camera.

    ``source`` is a video file, a folder of images sorted by name (a path without an extension, or ending in
    ``/``, e.g. a MOT ``img1/``), a live stream URL (``rtsp(s)://``, ``rtmp://``, ``http(s)://``, ``udp://``,
    ``tcp://``), or a webcam index (``0``); :func:`pipeline.camera.source_kind.source_kind` is the rule.
    ``start_time`` is the wall-clock time of the first frame (aware; naive means UTC); ``None`` means "from
    the file's metadata, else now". ``fps`` overrides the rate the source reports. ``roi`` is a polygon in
    pixel coordinates of the frame; detections outside it are ignored; ``None`` means the whole frame.
    ``crop`` is ``[x1, y1, x2, y2]``, integer pixels of the source's (upright) frame with ``0 <= x1 < x2`` and
    ``0 <= y1 < y2`` (x2, y2 exclusive): the camera sees only that rectangle, so one view can feed several
    cameras; ``roi`` and every box are then in pixels of the cropped view. ``None`` means the whole frame.
    Checked here by :func:`pipeline.camera.crop.check_crop`; whether it fits the frame, when the source opens.
    """

    override_key: ClassVar[str] = "id"

    id: str
    source: str = field(
        metadata={"secret": True, "env": True, "path": _is_recorded_source, "coerce": _webcam_index}
    )
    start_time: dt.datetime | None = None
    fps: float | None = None
    roi: tuple[tuple[float, float], ...] | None = None
    crop: tuple[int, int, int, int] | None = None
    enabled: bool = True

    @property
    def source_kind(self) -> SourceKind:
        """``"file"``, ``"images"``, ``"live"`` or ``"webcam"``, decided from the string alone."""
        return source_kind(self.source)

    def _check(self) -> None:
        need(
            bool(WORD.fullmatch(self.id)),
            "id",
            f"must be non-empty and use only letters, digits, _ and - (it names files), got {show(self.id)}",
        )
        need(bool(self.source.strip()), "source", "must not be empty")
        try:
            source_kind(self.source)
        except ValueError as err:
            raise ConfigError(str(err), key="source") from None
        check_min(self, "fps", 0, strict=True)
        if self.roi is not None:
            need(len(self.roi) >= 3, "roi", f"a polygon needs at least 3 points, got {len(self.roi)}")
            pts = self.roi
            twice_area = sum(
                pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
                for i in range(len(pts))
            )
            need(twice_area != 0, "roi", "the polygon has zero area (points on one line?)")
        if self.crop is not None:
            try:
                check_crop(self.crop)
            except ValueError as err:
                raise ConfigError(str(err), key="crop") from None


@dataclass(frozen=True, kw_only=True, repr=False)
class DetectorConfig(Section):
    """Person detector (ultralytics YOLO, never downloading). ``weights`` is a path to a ``.pt``,
    ``.torchscript`` or ``.onnx`` file or a ``*_openvino_model`` folder; the default is the shared OpenVINO
    YOLO11n (:data:`DEFAULT_DETECTOR_WEIGHTS`). ``imgsz`` is the square inference size; ``conf`` the score
    threshold; ``iou`` the NMS IoU threshold; ``batch`` the most frames per inference call; ``classes`` the
    model's class indices to keep (COCO 0 = person). ``device`` is ``auto`` (CUDA when present), ``cpu``,
    ``cuda`` or ``cuda:N``."""

    weights: str = field(default=DEFAULT_DETECTOR_WEIGHTS, metadata={"path": _is_weights_path})
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.7
    device: str = "auto"
    batch: int = 4
    classes: tuple[int, ...] = (0,)

    def _check(self) -> None:
        need(bool(self.weights.strip()), "weights", "must not be empty")
        need(
            self.imgsz > 0 and self.imgsz % 32 == 0,
            "imgsz",
            f"must be a positive multiple of 32 (the model stride), got {show(self.imgsz)}",
        )
        check_between(self, "conf", 0, 1)
        check_between(self, "iou", 0, 1, open_low=True)  # NMS with IoU 0 would keep one box per image
        check_device(self, "device")
        check_min(self, "batch", 1)
        need(len(self.classes) > 0, "classes", "needs at least one class index")
        for i, c in enumerate(self.classes):
            need(c >= 0, f"classes[{i}]", f"must be >= 0, got {show(c)}")


@dataclass(frozen=True, kw_only=True, repr=False)
class TrackerConfig(Section):
    """Per-camera tracker: ``name`` is a key of the tracker plug-in dict (checked there, not here); ``params``
    are passed to it as keyword arguments. The default, ``ocsort``, was chosen by measurement (docs/trackers.md):
    the cheapest tracker that loses least when one camera looks worse; ``strongsort`` links people across
    cameras best but costs ~75 ms of CPU per camera frame."""

    name: str = "ocsort"
    params: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        need(bool(self.name.strip()), "name", "must not be empty")


@dataclass(frozen=True, kw_only=True, repr=False)
class TrackletConfig(Section):
    """Tracklet building (:class:`pipeline.camera.tracklets.TrackletBuilder`). Lengths and gaps in frames,
    sizes in pixels. A track longer than ``max_length`` frames is emitted as numbered chunks; one lost for more
    than ``max_gap`` frames is closed. Boxes lower than ``min_box_height`` or narrower than ``min_box_width``,
    below ``min_conf``, covered more than ``max_overlap`` (a share of their area) by another detection, or closer
    than ``border_margin`` to the frame border ("cut") give no crop. At most
    ``max_crops`` crops, spread uniformly over the tracklet, are kept and resized to ``crop_height`` x
    ``crop_width``; tracklets with fewer than ``min_length`` crops are dropped, and since a piece that outgrew
    ``max_crops`` keeps at least ``ceil(max_crops / 2)``, ``min_length`` may not exceed that. The next chunk
    number of a closed track id is remembered for ``forget_after`` frames (for a track id that comes back)."""

    min_length: int = 4
    max_length: int = 300
    max_gap: int = 30
    min_box_height: int = 40
    min_box_width: int = 16
    min_conf: float = 0.3
    border_margin: int = 2
    max_overlap: float = 0.5
    max_crops: int = 32
    crop_height: int = 256
    crop_width: int = 128
    forget_after: int = 9000

    def _check(self) -> None:
        for name in ("min_length", "max_length", "max_crops", "crop_height", "crop_width"):
            check_min(self, name, 1)
        for name in ("min_box_height", "min_box_width"):
            check_min(self, name, 0, strict=True)
        for name in ("max_gap", "border_margin", "forget_after"):
            check_min(self, name, 0)
        check_between(self, "min_conf", 0, 1)
        check_between(self, "max_overlap", 0, 1)
        half = math.ceil(self.max_crops / 2)
        need(
            self.min_length <= half,
            "min_length",
            f"must be <= ceil(max_crops / 2) = {half} (a decimated tracklet keeps only that many crops), "
            f"got {self.min_length}",
        )
        need(
            self.min_length <= self.max_length,
            "min_length",
            f"must be <= max_length ({self.max_length}), got {self.min_length}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class ReplayConfig(Section):
    """Offline replay of file sources: ``realtime`` paces frames at their timestamps instead of running as
    fast as possible; ``max_frames`` stops each camera after that many frames (``None``: the whole file);
    ``loop`` starts a file or image folder again from its first frame when it ends, frame indices and
    timestamps carried on (each pass offset by the duration of the passes before it), until the run is
    stopped or ``max_frames`` frames were read. Live sources ignore ``loop``."""

    realtime: bool = False
    max_frames: int | None = None
    loop: bool = False

    def _check(self) -> None:
        check_min(self, "max_frames", 1)


@dataclass(frozen=True, kw_only=True, repr=False)
class LiveConfig(Section):
    """Live sources (stream URLs, webcams): opening may take up to ``open_timeout_s``; a read that blocks
    longer than ``read_timeout_s`` counts as a lost stream; reconnection waits start at
    ``reconnect_initial_s`` and double up to ``reconnect_max_s``. Seconds."""

    read_timeout_s: float = 5.0
    open_timeout_s: float = 10.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0

    def _check(self) -> None:
        for name in ("read_timeout_s", "open_timeout_s", "reconnect_initial_s"):
            check_min(self, name, 0, strict=True)
        need(
            self.reconnect_max_s >= self.reconnect_initial_s,
            "reconnect_max_s",
            f"must be >= reconnect_initial_s ({self.reconnect_initial_s}), got {self.reconnect_max_s}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class ReIDConfig(Section):
    """Re-ID workers. ``checkpoint`` ``None`` means the project's default checkpoint; ``backbone_weights``
    optionally initialises the backbone. Workers read tracklets in consumer group ``group`` and send batches
    of up to ``batch_size`` tracklets when full or after ``max_wait_ms``; a tracklet another worker left
    unacknowledged for ``reclaim_idle_ms`` is taken over. Each tracklet is reduced to ``num_frames`` frames by
    restricted random sampling (N in the paper; ``None``: the N the checkpoint's network was trained with).
    Each embedding carries the tracklet's ``picture_crops`` best crops by temporal attention and one attention
    picture, as JPEG at ``picture_quality`` (1..100); ``picture_crops`` 0 stores no pictures."""

    checkpoint: str | None = field(default=None, metadata={"path": _always})
    backbone_weights: str | None = field(default=None, metadata={"path": _always})
    device: str = "auto"
    batch_size: int = 8
    max_wait_ms: int = 200
    reclaim_idle_ms: int = 30_000
    num_frames: int | None = None
    group: str = "reid"
    picture_crops: int = 3
    picture_quality: int = 85

    def _check(self) -> None:
        for name in ("checkpoint", "backbone_weights"):
            value = getattr(self, name)
            need(
                value is None or bool(value.strip()), name, "must not be empty (leave it out for the default)"
            )
        check_device(self, "device")
        check_min(self, "batch_size", 1)
        check_min(self, "max_wait_ms", 0)
        check_min(self, "reclaim_idle_ms", 1)
        check_min(self, "num_frames", 1)
        _check_group(self, "group")
        check_min(self, "picture_crops", 0)
        check_between(self, "picture_quality", 1, 100)


@dataclass(frozen=True, kw_only=True, repr=False)
class MatcherConfig(Section):
    """Cross-camera matching: a tracklet joins the most similar identity when the cosine similarity reaches
    ``threshold`` (else it starts a new identity); each identity keeps up to ``max_prototypes`` embeddings.
    ``threshold`` ``auto`` (stored as ``None``, the default) is the threshold the re-ID checkpoint records,
    calibrated on its validation pairs (cosine scales differ between models); a number overrides it.
    Tracklets are decided in closing-time buckets of ``window_s`` seconds, in time order, once every camera
    has passed the bucket; a tracklet still missing after ``max_wait_s`` (a camera or worker gone) is no
    longer waited for (docs/matcher.md, "Order"). The matcher reads embeddings in consumer group ``group``.
    ``camera_centering`` takes each camera's mean embedding out before comparing (docs/matcher.md, §3a):
    ``auto`` (stored as ``None``, the default: on when ``threshold`` is ``auto`` and the checkpoint records a
    camera prior and a threshold for it), ``false`` (compare the embeddings as they come; a threshold given as
    a number is always on this raw scale unless centering is ``true``) or ``true`` (an error without a
    prior)."""

    threshold: float | None = field(default=None, metadata={"coerce": _auto_threshold})
    camera_centering: bool | None = field(default=None, metadata={"coerce": _auto_flag})
    max_prototypes: int = 10
    window_s: float = 1.0
    max_wait_s: float = 60.0
    group: str = "matcher"

    def _check(self) -> None:
        if self.threshold is not None:
            check_between(self, "threshold", -1, 1)
        check_min(self, "max_prototypes", 1)
        check_min(self, "window_s", 0, strict=True)
        check_min(self, "max_wait_s", 0, strict=True)
        _check_group(self, "group")


@dataclass(frozen=True, kw_only=True, repr=False)
class TopologyLink(Section):
    """Two cameras a person can walk between, in either direction, taking between ``min_transit_s`` and
    ``max_transit_s`` seconds from leaving one to appearing in the other."""

    cameras: tuple[str, str]
    min_transit_s: float = 0.0
    max_transit_s: float

    def _check(self) -> None:
        need(
            self.cameras[0] != self.cameras[1],
            "cameras",
            f"must name two different cameras, got {self.cameras}",
        )
        check_min(self, "min_transit_s", 0)
        need(
            self.min_transit_s <= self.max_transit_s,
            "max_transit_s",
            f"must be >= min_transit_s ({self.min_transit_s}), got {self.max_transit_s}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class TopologyConfig(Section):
    """Camera topology: ``links`` between cameras with transit times; ``overlaps`` are pairs of cameras that
    see the same place at the same time. Empty (the default) means no spatio-temporal gating."""

    links: tuple[TopologyLink, ...] = ()
    overlaps: tuple[tuple[str, str], ...] = ()

    def _check(self) -> None:
        seen: dict[frozenset[str], int] = {}
        for i, link in enumerate(self.links):
            pair = frozenset(link.cameras)
            need(
                pair not in seen,
                f"links[{i}].cameras",
                f"duplicates links[{seen.get(pair)}] (links are undirected)",
            )
            seen[pair] = i
        for i, (a, b) in enumerate(self.overlaps):
            need(a != b, f"overlaps[{i}]", f"must name two different cameras, got {(a, b)}")


@dataclass(frozen=True, kw_only=True, repr=False)
class QueueConfig(Section):
    """Queues between stages. ``redis_url`` ``None`` uses the embedded in-process transport; otherwise Redis
    Streams named ``<stream_prefix>:<stream>``, trimmed to about ``maxlen`` entries. A message handed out more
    than ``max_deliveries`` times without being acknowledged goes to the dead-letter stream."""

    redis_url: str | None = field(default=None, metadata={"secret": True, "env": True})
    stream_prefix: str = "reid"
    maxlen: int = 10000
    max_deliveries: int = 5

    def _check(self) -> None:
        if self.redis_url is not None:
            scheme = URL_SCHEME.match(self.redis_url)
            need(
                scheme is not None and scheme.group(1).lower() in ("redis", "rediss", "unix"),
                "redis_url",
                f"expected a redis://, rediss:// or unix:// URL, got {show(self.redis_url)}",
            )
        _check_group(self, "stream_prefix")
        check_min(self, "maxlen", 1)
        check_min(self, "max_deliveries", 1)


@dataclass(frozen=True, kw_only=True, repr=False)
class DBConfig(Section):
    """The store: any SQLAlchemy URL (SQLite by default, ``postgresql+psycopg://...`` in production)."""

    url: str = field(default="sqlite:///reid.db", metadata={"secret": True, "env": True})

    def _check(self) -> None:
        need(
            URL_SCHEME.match(self.url) is not None,
            "url",
            f"expected an SQLAlchemy URL such as sqlite:///reid.db, got {show(self.url)}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class RetentionConfig(Section):
    """How long the store keeps people. ``days``: tracklets (with their embeddings, pictures, boxes and
    sightings) that ended more than this many days before the latest footage time the matcher has decided
    are deleted, and identities left without a sighting are deleted and their ids retired
    (docs/schema.md, "Forgetting a person, and retention"); ``None`` keeps everything forever. The running
    matcher prunes when it starts and then every ``prune_every_s`` seconds of footage time."""

    days: float | None = None
    prune_every_s: float = 600.0

    def _check(self) -> None:
        check_min(self, "days", 0, strict=True)
        check_min(self, "prune_every_s", 0, strict=True)


@dataclass(frozen=True, kw_only=True, repr=False)
class PrivacyConfig(Section):
    """What the pipeline keeps of people's faces. ``blur_heads``: blur the head region of every stored
    person crop and of rendered video (``run_pipeline.py render``), a heuristic on the person box (its top
    fifth, full width; see :mod:`pipeline.privacy`) that needs no face detector and may miss a bent or
    partly hidden head. Off by default. Embeddings are computed from the unblurred crops either way."""

    blur_heads: bool = False


@dataclass(frozen=True, kw_only=True, repr=False)
class PipelineConfig(Section):
    """The whole ``cams.yaml``. ``cameras`` is required (at least one, unique ids); every other section has
    defaults. Camera ids named in ``topology`` must exist in ``cameras``."""

    cameras: tuple[CameraConfig, ...]
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    tracklets: TrackletConfig = field(default_factory=TrackletConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    reid: ReIDConfig = field(default_factory=ReIDConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    db: DBConfig = field(default_factory=DBConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    @property
    def enabled_cameras(self) -> tuple[CameraConfig, ...]:
        return tuple(c for c in self.cameras if c.enabled)

    def selected_cameras(self, only: Sequence[str] | None = None) -> tuple[CameraConfig, ...]:
        """The enabled cameras, or the ``only`` ones among them (``--only``), in config order. An unknown or
        disabled id in ``only`` raises a one-line ``ValueError`` naming ``--only`` and listing the valid ids."""
        enabled = self.enabled_cameras
        if only is not None:
            unknown = sorted(set(only) - {c.id for c in enabled})
            if unknown:
                raise ValueError(
                    f"--only: unknown or disabled camera(s) {unknown}; valid: {[c.id for c in enabled]}"
                )
        return tuple(c for c in enabled if only is None or c.id in only)

    def camera(self, camera_id: str) -> CameraConfig:
        """The camera with this id; ``KeyError`` listing the valid ids otherwise."""
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(f"no camera {camera_id!r} (cameras: {', '.join(c.id for c in self.cameras)})")

    def _check(self) -> None:
        need(len(self.cameras) > 0, "cameras", "needs at least one camera")
        first: dict[str, int] = {}
        for i, cam in enumerate(self.cameras):
            need(
                cam.id not in first,
                f"cameras[{i}].id",
                f"duplicate camera id {cam.id!r} (also cameras[{first.get(cam.id)}])",
            )
            first[cam.id] = i
        known = ", ".join(first)
        named = [
            (f"topology.links[{i}].cameras[{j}]", c)
            for i, link in enumerate(self.topology.links)
            for j, c in enumerate(link.cameras)
        ]
        named += [
            (f"topology.overlaps[{i}][{j}]", c)
            for i, p in enumerate(self.topology.overlaps)
            for j, c in enumerate(p)
        ]
        for key, cam_id in named:
            need(cam_id in first, key, f"unknown camera {show(cam_id)} (cameras: {known})")
