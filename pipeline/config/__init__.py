"""The ``cams.yaml`` schema: one tree of frozen dataclasses, loaded from YAML and validated at load.

Precedence is code defaults < YAML < command-line overrides. Every default is written once, in the dataclass
fields below; the loader only fills in the keys the YAML (or an override) gives.

Public API
----------
- :func:`load_config` reads a YAML file, applies ``--set key=value`` overrides and returns a validated
  :class:`PipelineConfig`.
- :func:`apply_overrides` applies overrides to an existing config and returns a new one.
- :func:`config_from_dict` validates an already-parsed mapping (what ``yaml.safe_load`` returns).
- :func:`config_to_dict` turns a config into plain data for logging, with secrets redacted.
- :func:`redact_url` hides the password in a URL; used for ``repr``, :func:`config_to_dict` and every error.
- :class:`ConfigError` (a ``ValueError``) is the only exception bad input raises. Its message is one line:
  ``<file>: <dotted.key>: <what is wrong>``, e.g. ``cams.yaml: detector.conf: expected a number, got 'high'``.
  Errors caused by an override say so: ``cams.yaml (--set): detector.conf: ...``.

Conventions
-----------
- Types are strict: a string where a number is expected is an error, an int where a float is expected is
  fine, a bool is never a number, a YAML list is fine where a tuple is typed. A section may be left empty
  (``detector:``) to take all its defaults.
- Cameras are addressed by index in YAML error messages (``cameras[1].fps``) and by id in overrides
  (``cameras.cam1.fps=5``); topology links by index in both (``topology.links.0.max_transit_s=60``).
- Relative paths in ``cameras[].source``, ``reid.checkpoint`` and ``reid.backbone_weights`` are resolved
  relative to the directory of the YAML file; so is ``detector.weights`` when it contains a ``/`` (a bare name
  such as ``yolo11n.pt`` is an ultralytics model name and stays as it is). Paths given with ``--set`` are
  resolved relative to the current working directory, as the shell would complete them. ``~`` is expanded.
  URLs and webcam indices are never touched. ``db.url`` is handed to SQLAlchemy unchanged, so a relative
  SQLite path there is relative to the working directory.
- ``${NAME}`` in ``queue.redis_url``, ``db.url`` and ``cameras[].source`` is replaced by the environment
  variable ``NAME`` at load time (an unset variable is an error), so passwords need not be written in the
  file; ``$$`` stands for a literal ``$``.
- ``start_time`` is timezone-aware; a time written without an offset is taken as UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yaml

__all__ = [
    "CameraConfig",
    "ConfigError",
    "DBConfig",
    "DetectorConfig",
    "LiveConfig",
    "MatcherConfig",
    "PipelineConfig",
    "QueueConfig",
    "ReIDConfig",
    "ReplayConfig",
    "TopologyConfig",
    "TopologyLink",
    "TrackerConfig",
    "TrackletConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "redact_url",
]

SourceKind = typing.Literal["file", "images", "rtsp", "http", "webcam"]

_WORD = re.compile(r"[A-Za-z0-9_-]+")
_DEVICE = re.compile(r"auto|cpu|cuda(?::[0-9]+)?")
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:[a-z_]*pass(?:word)?|passwd|pwd|secret|[a-z_]*token|api_?key|access_?key|auth)=)[^&;#]*"
)
_ENV_REF = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)\}|(\{))")
_MAX_DATA_DEPTH = 32


# ----------------------------------------------------------------------------------------------------
# Errors and redaction


class ConfigError(ValueError):
    """Invalid configuration. ``str(err)`` is one line: ``<source>: <key>: <detail>`` (empty parts omitted).

    ``source`` names where the input came from (the YAML path as given, ``"<file> (--set)"`` for an override,
    or the dataclass name when a section is constructed directly), ``key`` is the dotted key
    (``cameras[1].fps``), ``detail`` says what is wrong. Echoed values have URL credentials redacted.
    """

    def __init__(self, detail: str, *, key: str = "", source: str = "") -> None:
        self.detail, self.key, self.source = detail, key, source
        text = ": ".join(part for part in (source, key, detail) if part)
        super().__init__(_LINE_BREAK.sub(lambda m: repr(m.group())[1:-1], text))


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``; other strings come back unchanged.

    ``redis://:pw@host`` -> ``redis://:***@host``; ``postgresql://user:pw@host/db`` ->
    ``postgresql://user:***@host/db``. A user-info without ``:`` (``redis://pw@host``, which some clients read
    as a password) is replaced whole. Query parameters that carry secrets (``?password=``, ``?token=``...) are
    redacted too. Errs on the side of hiding: everything up to the last ``@`` counts as user-info.
    Never raises.
    """
    if not isinstance(url, str):
        return url
    scheme = _URL_SCHEME.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@", start)
    if at > start:
        user, colon, _ = url[start:at].partition(":")
        masked = f"{user}:***" if colon and "/" not in user else "***"
        url = url[:start] + masked + url[at:]
    return _SECRET_QUERY.sub(r"\1***", url)


def _show(value: Any) -> str:
    """Short one-line description of a user-supplied value for an error message, secrets redacted."""
    if isinstance(value, str):
        text = repr(redact_url(value))
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = repr(value) if abs(value) < 10**30 else "a very large integer"
    elif isinstance(value, dt.date):
        text = value.isoformat()
    elif isinstance(value, Mapping):
        return "a mapping"
    elif isinstance(value, list | tuple):
        return "a list"
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _name(key: Any) -> str:
    """A mapping key as it appears in a dotted error key."""
    return key if isinstance(key, str) and _WORD.fullmatch(key) else _show(key)


def _join(prefix: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    if not prefix or not part:
        return prefix or part
    return prefix + part if part.startswith("[") else f"{prefix}.{part}"


def _need(ok: bool, key: str, detail: str) -> None:
    if not ok:
        raise ConfigError(detail, key=key)


def _check_min(obj: Any, name: str, low: float, *, strict: bool = False) -> None:
    value = getattr(obj, name)
    if value is not None:
        ok = value > low if strict else value >= low
        _need(ok, name, f"must be {'>' if strict else '>='} {low}, got {_show(value)}")


def _check_between(obj: Any, name: str, low: float, high: float) -> None:
    value = getattr(obj, name)
    _need(low <= value <= high, name, f"must be between {low} and {high}, got {_show(value)}")


def _check_device(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    _need(bool(_DEVICE.fullmatch(value)), name, f"expected auto, cpu, cuda or cuda:N, got {_show(value)}")


def _source_kind(source: str) -> SourceKind:
    if source.isascii() and source.isdigit():
        return "webcam"
    lower = source.lower()
    if lower.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lower.startswith(("http://", "https://")):
        return "http"
    if source.endswith(("/", os.sep)) or not PurePath(source).suffix:
        return "images"
    return "file"


# ----------------------------------------------------------------------------------------------------
# Sections


class _Section:
    """Base of every section: normalises field values (lists to tuples, ints to floats, naive times to UTC)
    and validates them on construction, so a section built in code is checked like one loaded from YAML."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        try:
            for f in dataclasses.fields(self):  # type: ignore[arg-type]
                value = getattr(self, f.name)
                new = _convert(value, hints[f.name], f.name, _DIRECT, f.metadata)
                if new is not value:
                    object.__setattr__(self, f.name, new)
            self._check()
        except ConfigError as err:
            raise ConfigError(err.detail, key=err.key, source=type(self).__name__) from None

    def _check(self) -> None:
        """Range and cross-field checks; raise ConfigError with ``key`` relative to this section."""

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get("secret") and isinstance(value, str):
                value = redact_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def _webcam_index(value: Any) -> Any:
    """``source: 0`` in YAML is webcam 0: normalise a non-negative int to its digit string."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 10_000:
            raise ConfigError(f"a webcam index must be between 0 and 9999, got {_show(value)}")
        return str(value)
    return value


@dataclass(frozen=True, kw_only=True, repr=False)
class CameraConfig(_Section):
    """One camera.

    ``source`` is a video file, a folder of images sorted by name (a path without an extension, or ending in
    ``/``, e.g. a MOT ``img1/``), an ``rtsp(s)://`` or ``http(s)://`` URL, or a webcam index (``0``).
    ``start_time`` is the wall-clock time of the first frame (aware; naive means UTC); ``None`` means "from
    the file's metadata, else now". ``fps`` overrides the rate the source reports. ``roi`` is a polygon in
    pixel coordinates of the frame; detections outside it are ignored; ``None`` means the whole frame.
    """

    id: str
    source: str = field(metadata={"secret": True, "env": True, "path": "source", "coerce": _webcam_index})
    start_time: dt.datetime | None = None
    fps: float | None = None
    roi: tuple[tuple[float, float], ...] | None = None
    enabled: bool = True

    @property
    def source_kind(self) -> SourceKind:
        """``"file"``, ``"images"``, ``"rtsp"``, ``"http"`` or ``"webcam"``, decided from the string alone."""
        return _source_kind(self.source)

    def _check(self) -> None:
        _need(
            bool(_WORD.fullmatch(self.id)),
            "id",
            f"must be non-empty and use only letters, digits, _ and - (it names files), got {_show(self.id)}",
        )
        _need(bool(self.source.strip()), "source", "must not be empty")
        scheme = _URL_SCHEME.match(self.source)
        if scheme and scheme.group(1).lower() not in ("rtsp", "rtsps", "http", "https"):
            raise ConfigError(
                f"unsupported URL scheme {_show(scheme.group(1))} (supported: rtsp, rtsps, http, https)",
                key="source",
            )
        _check_min(self, "fps", 0, strict=True)
        if self.roi is not None:
            _need(len(self.roi) >= 3, "roi", f"a polygon needs at least 3 points, got {len(self.roi)}")
            pts = self.roi
            twice_area = sum(
                pts[i][0] * pts[(i + 1) % len(pts)][1] - pts[(i + 1) % len(pts)][0] * pts[i][1]
                for i in range(len(pts))
            )
            _need(twice_area != 0, "roi", "the polygon has zero area (points on one line?)")


@dataclass(frozen=True, kw_only=True, repr=False)
class DetectorConfig(_Section):
    """Person detector (ultralytics). ``weights`` is a path (``.pt``, an exported model folder...) or an
    ultralytics model name that it downloads. ``classes`` are the model's class indices to keep (COCO 0 =
    person). ``device`` is ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""

    weights: str = field(default="yolo11n.pt", metadata={"path": "weights"})
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.7
    device: str = "auto"
    batch: int = 4
    classes: tuple[int, ...] = (0,)

    def _check(self) -> None:
        _need(bool(self.weights.strip()), "weights", "must not be empty")
        _need(
            self.imgsz > 0 and self.imgsz % 32 == 0,
            "imgsz",
            f"must be a positive multiple of 32 (the model stride), got {_show(self.imgsz)}",
        )
        _check_between(self, "conf", 0, 1)
        _check_between(self, "iou", 0, 1)
        _check_device(self, "device")
        _check_min(self, "batch", 1)
        _need(len(self.classes) > 0, "classes", "needs at least one class index")
        for i, c in enumerate(self.classes):
            _need(c >= 0, f"classes[{i}]", f"must be >= 0, got {_show(c)}")


@dataclass(frozen=True, kw_only=True, repr=False)
class TrackerConfig(_Section):
    """Per-camera tracker: ``name`` is a key of the tracker plug-in dict (checked there, not here); ``params``
    are passed to it as keyword arguments."""

    name: str = "bytetrack"
    params: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        _need(bool(self.name.strip()), "name", "must not be empty")


@dataclass(frozen=True, kw_only=True, repr=False)
class TrackletConfig(_Section):
    """Tracklet building. Lengths and gaps in frames, sizes in pixels. A track longer than ``max_length``
    frames is emitted as numbered chunks; one lost for more than ``max_gap`` frames is closed. Boxes smaller
    than ``min_box_height`` x ``min_box_width``, below ``min_conf``, or closer than ``border_margin`` to the
    frame border ("cut") give no crop. At most ``max_crops`` crops, spread uniformly over the tracklet, are
    kept and resized to ``crop_height`` x ``crop_width``; tracklets shorter than ``min_length`` are
    dropped."""

    min_length: int = 4
    max_length: int = 300
    max_gap: int = 30
    min_box_height: int = 40
    min_box_width: int = 16
    min_conf: float = 0.3
    border_margin: int = 2
    max_crops: int = 32
    crop_height: int = 256
    crop_width: int = 128

    def _check(self) -> None:
        for name in ("min_length", "max_length", "max_crops", "crop_height", "crop_width"):
            _check_min(self, name, 1)
        for name in ("max_gap", "min_box_height", "min_box_width", "border_margin"):
            _check_min(self, name, 0)
        _check_between(self, "min_conf", 0, 1)
        _need(
            self.min_length <= self.max_length,
            "min_length",
            f"must be <= max_length ({self.max_length}), got {self.min_length}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class ReplayConfig(_Section):
    """Offline replay of file sources: ``realtime`` paces frames at their timestamps instead of running as
    fast as possible; ``max_frames`` stops each camera after that many frames (``None``: the whole file);
    ``loop`` starts a file or image folder again from its first frame when it ends, frame indices and
    timestamps carried on (each pass offset by the duration of the passes before it), until the run is
    stopped or ``max_frames`` frames were read. Live sources ignore ``loop``."""

    realtime: bool = False
    max_frames: int | None = None
    loop: bool = False

    def _check(self) -> None:
        _check_min(self, "max_frames", 1)


@dataclass(frozen=True, kw_only=True, repr=False)
class LiveConfig(_Section):
    """Live sources (rtsp, http, webcam): a read that blocks longer than ``read_timeout_s`` counts as a lost
    stream; reconnection waits start at ``reconnect_initial_s`` and double up to ``reconnect_max_s``."""

    read_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0

    def _check(self) -> None:
        _check_min(self, "read_timeout_s", 0, strict=True)
        _check_min(self, "reconnect_initial_s", 0, strict=True)
        _need(
            self.reconnect_max_s >= self.reconnect_initial_s,
            "reconnect_max_s",
            f"must be >= reconnect_initial_s ({self.reconnect_initial_s}), got {self.reconnect_max_s}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class ReIDConfig(_Section):
    """Re-ID encoder. ``checkpoint`` ``None`` means the project's default checkpoint; ``backbone_weights``
    optionally initialises the backbone. Batches of up to ``batch_size`` tracklets are sent when full or after
    ``max_wait_ms``; each tracklet is reduced to ``num_frames`` frames (restricted random sampling, N)."""

    checkpoint: str | None = field(default=None, metadata={"path": "always"})
    backbone_weights: str | None = field(default=None, metadata={"path": "always"})
    device: str = "auto"
    batch_size: int = 8
    max_wait_ms: int = 200
    num_frames: int = 6

    def _check(self) -> None:
        for name in ("checkpoint", "backbone_weights"):
            value = getattr(self, name)
            _need(
                value is None or bool(value.strip()), name, "must not be empty (leave it out for the default)"
            )
        _check_device(self, "device")
        _check_min(self, "batch_size", 1)
        _check_min(self, "max_wait_ms", 0)
        _check_min(self, "num_frames", 1)


@dataclass(frozen=True, kw_only=True, repr=False)
class MatcherConfig(_Section):
    """Cross-camera matching: a tracklet joins the most similar identity when the cosine similarity reaches
    ``threshold`` (else it starts a new identity); each identity keeps up to ``max_prototypes`` embeddings.
    Tracklets are decided in closing-time buckets of ``window_s`` seconds, in time order, once every camera
    has passed the bucket; a tracklet still missing after ``max_wait_s`` (a camera or worker gone) is no
    longer waited for (docs/matcher.md, "Order")."""

    threshold: float = 0.6
    max_prototypes: int = 10
    window_s: float = 1.0
    max_wait_s: float = 60.0

    def _check(self) -> None:
        _check_between(self, "threshold", -1, 1)
        _check_min(self, "max_prototypes", 1)
        _check_min(self, "window_s", 0, strict=True)
        _check_min(self, "max_wait_s", 0, strict=True)


@dataclass(frozen=True, kw_only=True, repr=False)
class TopologyLink(_Section):
    """Two cameras a person can walk between, in either direction, taking between ``min_transit_s`` and
    ``max_transit_s`` seconds from leaving one to appearing in the other."""

    cameras: tuple[str, str]
    min_transit_s: float = 0.0
    max_transit_s: float

    def _check(self) -> None:
        _need(
            self.cameras[0] != self.cameras[1],
            "cameras",
            f"must name two different cameras, got {self.cameras}",
        )
        _check_min(self, "min_transit_s", 0)
        _need(
            self.min_transit_s <= self.max_transit_s,
            "max_transit_s",
            f"must be >= min_transit_s ({self.min_transit_s}), got {self.max_transit_s}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class TopologyConfig(_Section):
    """Camera topology: ``links`` between cameras with transit times; ``overlaps`` are pairs of cameras that
    see the same place at the same time. Empty (the default) means no spatio-temporal gating."""

    links: tuple[TopologyLink, ...] = ()
    overlaps: tuple[tuple[str, str], ...] = ()

    def _check(self) -> None:
        seen: dict[frozenset[str], int] = {}
        for i, link in enumerate(self.links):
            pair = frozenset(link.cameras)
            _need(
                pair not in seen,
                f"links[{i}].cameras",
                f"duplicates links[{seen.get(pair)}] (links are undirected)",
            )
            seen[pair] = i
        for i, (a, b) in enumerate(self.overlaps):
            _need(a != b, f"overlaps[{i}]", f"must name two different cameras, got {(a, b)}")


@dataclass(frozen=True, kw_only=True, repr=False)
class QueueConfig(_Section):
    """Queues between stages. ``redis_url`` ``None`` uses the embedded in-process transport; otherwise Redis
    Streams named ``<stream_prefix>:<stream>``, trimmed to about ``maxlen`` entries."""

    redis_url: str | None = field(default=None, metadata={"secret": True, "env": True})
    stream_prefix: str = "reid"
    maxlen: int = 10000

    def _check(self) -> None:
        if self.redis_url is not None:
            scheme = _URL_SCHEME.match(self.redis_url)
            _need(
                scheme is not None and scheme.group(1).lower() in ("redis", "rediss", "unix"),
                "redis_url",
                f"expected a redis://, rediss:// or unix:// URL, got {_show(self.redis_url)}",
            )
        _need(
            bool(re.fullmatch(r"[A-Za-z0-9_.:-]+", self.stream_prefix)),
            "stream_prefix",
            f"must be non-empty and use only letters, digits and _ . : -, got {_show(self.stream_prefix)}",
        )
        _check_min(self, "maxlen", 1)


@dataclass(frozen=True, kw_only=True, repr=False)
class DBConfig(_Section):
    """The store: any SQLAlchemy URL (SQLite by default, ``postgresql+psycopg://...`` in production)."""

    url: str = field(default="sqlite:///reid.db", metadata={"secret": True, "env": True})

    def _check(self) -> None:
        _need(
            _URL_SCHEME.match(self.url) is not None,
            "url",
            f"expected an SQLAlchemy URL such as sqlite:///reid.db, got {_show(self.url)}",
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class PipelineConfig(_Section):
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

    @property
    def enabled_cameras(self) -> tuple[CameraConfig, ...]:
        return tuple(c for c in self.cameras if c.enabled)

    def camera(self, camera_id: str) -> CameraConfig:
        """The camera with this id; ``KeyError`` listing the valid ids otherwise."""
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise KeyError(f"no camera {camera_id!r} (cameras: {', '.join(c.id for c in self.cameras)})")

    def _check(self) -> None:
        _need(len(self.cameras) > 0, "cameras", "needs at least one camera")
        first: dict[str, int] = {}
        for i, cam in enumerate(self.cameras):
            _need(
                cam.id not in first,
                f"cameras[{i}].id",
                f"duplicate camera id {cam.id!r} (also cameras[{first.get(cam.id)}])",
            )
            first[cam.id] = i
        known = ", ".join(first)
        named = [
            (f"topology.links[{i}].cameras[{j}]", c)
            for i, l in enumerate(self.topology.links)
            for j, c in enumerate(l.cameras)
        ]
        named += [
            (f"topology.overlaps[{i}][{j}]", c)
            for i, p in enumerate(self.topology.overlaps)
            for j, c in enumerate(p)
        ]
        for key, cam_id in named:
            _need(cam_id in first, key, f"unknown camera {_show(cam_id)} (cameras: {known})")


# ----------------------------------------------------------------------------------------------------
# Conversion of parsed YAML into sections


@dataclass(frozen=True)
class _Ctx:
    base_dir: Path | None  # relative paths are resolved against it; None leaves them as they are
    env: Mapping[str, str] | None  # ${NAME} substitution; None disables it


_DIRECT = _Ctx(base_dir=None, env=None)


@dataclass(frozen=True)
class _Override:
    """A ``--set`` value for a path field: relative paths in it resolve against ``base_dir`` (the cwd)."""

    value: Any
    base_dir: Path


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(value: Any, tp: Any, key: str, ctx: _Ctx, meta: Mapping[str, Any]) -> Any:
    """Convert one field's raw value: ``${NAME}`` substitution, coercion, type check, path resolution."""
    if isinstance(value, _Override):
        ctx = dataclasses.replace(ctx, base_dir=value.base_dir)
        value = value.value
    if meta.get("env") and ctx.env is not None and isinstance(value, str):
        value = _substitute_env(value, key, ctx.env)
    if "coerce" in meta:
        try:
            value = meta["coerce"](value)
        except ConfigError as err:
            raise ConfigError(err.detail, key=key) from None
    value = _convert_type(value, tp, key, ctx)
    if meta.get("path") and isinstance(value, str) and ctx.base_dir is not None:
        value = _resolve_path(value, meta["path"], ctx.base_dir)
    return value


def _convert_type(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return _plain_data(value, key, 0, ())
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        return _convert_type(value, _strip_optional(tp), key, ctx)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_section(tp, value, key, ctx)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {_show(value)}", key=key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert_type(v, args[0], _join(key, i), ctx) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"expected a list of {len(args)} items, got {len(value)}", key=key)
        return tuple(
            _convert_type(v, a, _join(key, i), ctx) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {_show(value)}", key=key)
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"keys must be strings, got {_show(k)}", key=key)
        return {k: _plain_data(v, _join(key, _name(k)), 1, ()) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {_show(value)}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {_show(value)}", key=key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {_show(value)}", key=key)
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"number out of range: {_show(value)}", key=key) from None
        if not math.isfinite(number):
            raise ConfigError(f"expected a finite number, got {_show(value)}", key=key)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {_show(value)}", key=key)
        return value
    if tp is dt.datetime:
        return _parse_time(value, key)
    raise TypeError(f"config schema: unsupported field type {tp!r} at {key}")  # a bug in this module


def _build_section(cls: type, value: Any, key: str, ctx: _Ctx) -> Any:
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}  # an empty section (``detector:``) takes all defaults
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping, got {_show(value)}", key=key)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for k in value:
        if not (isinstance(k, str) and k in names):
            raise ConfigError(f"unknown key (valid: {', '.join(names)})", key=_join(key, _name(k)))
    hints = _hints(cls)
    kwargs = {}
    for f in fields:
        if f.name in value:
            kwargs[f.name] = _convert(value[f.name], hints[f.name], _join(key, f.name), ctx, f.metadata)
        elif _is_required(f):
            raise ConfigError("missing required key", key=_join(key, f.name))
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(err.detail, key=_join(key, err.key)) from None


def _plain_data(value: Any, key: str, depth: int, parents: tuple[int, ...]) -> Any:
    """Copy free-form YAML data (``tracker.params``), rejecting cycles, deep nesting and non-YAML types."""
    if value is None or isinstance(value, str | bool | int | float | bytes | dt.date):
        return value
    if depth > _MAX_DATA_DEPTH:
        raise ConfigError(f"nested deeper than {_MAX_DATA_DEPTH} levels", key=key)
    if id(value) in parents:
        raise ConfigError("contains a reference to itself", key=key)
    inner = (*parents, id(value))
    if isinstance(value, Mapping):
        return {k: _plain_data(v, _join(key, _name(k)), depth + 1, inner) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain_data(v, _join(key, i), depth + 1, inner) for i, v in enumerate(value))
    raise ConfigError(f"expected plain YAML data, got {_show(value)}", key=key)


def _parse_time(value: Any, key: str) -> dt.datetime:
    example = "e.g. 2024-05-14T09:00:00+02:00"
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, dt.date):
        raise ConfigError(f"expected a date and time ({example}), got a date only: {_show(value)}", key=key)
    elif isinstance(value, str):
        text = value.strip()
        if not re.search(r"[Tt ]", text):
            raise ConfigError(f"expected an ISO 8601 date and time ({example}), got {_show(value)}", key=key)
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(
                f"expected an ISO 8601 date and time ({example}), got {_show(value)}", key=key
            ) from None
    else:
        raise ConfigError(f"expected an ISO 8601 date and time ({example}), got {_show(value)}", key=key)
    if t.tzinfo is None or t.utcoffset() is None:
        t = t.replace(tzinfo=dt.UTC)  # documented: a time without an offset is UTC
    try:
        t.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ConfigError(f"date and time out of range: {_show(value)}", key=key) from None
    return t


def _substitute_env(text: str, key: str, env: Mapping[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2)
        if name is None:
            raise ConfigError(
                "malformed ${...}: write ${NAME} (letters, digits, _) or $$ for a literal $", key=key
            )
        if name not in env:
            raise ConfigError(f"environment variable {name} is not set", key=key)
        return env[name]

    return _ENV_REF.sub(replace, text)


def _resolve_path(value: str, kind: str, base_dir: Path) -> str:
    if not value.strip() or _URL_SCHEME.match(value):
        return value  # empty: rejected by the section's check; URLs are not paths
    if kind == "source" and _source_kind(value) not in ("file", "images"):
        return value
    if kind == "weights" and not ("/" in value or os.sep in value or value.startswith("~")):
        return value  # an ultralytics model name
    path = os.path.expanduser(value)
    out = os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))
    if value.endswith(("/", os.sep)) and not out.endswith(os.sep):
        out += os.sep  # keep the "this is a folder" hint
    return out


# ----------------------------------------------------------------------------------------------------
# Overrides


def _merge_overrides(
    raw: Mapping[Any, Any], overrides: Sequence[str], source: str
) -> tuple[dict[Any, Any], list[tuple[str, str]]]:
    """Apply ``key=value`` overrides to a copy of the raw mapping (copying only along the paths they touch).

    Returns the merged mapping and, per override, ``(internal key, key as typed)``, e.g.
    ``("cameras[0].fps", "cameras.cam1.fps")``, so that later errors can be blamed on the override.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    origin = f"{source} (--set)" if source else "--set"
    root: dict[Any, Any] = dict(raw)
    blame: list[tuple[str, str]] = []
    for text in overrides:
        key_text, sep, value_text = text.partition("=")
        key_text = key_text.strip()
        parts = key_text.split(".")
        if not sep or not all(_WORD.fullmatch(p) for p in parts):
            raise ConfigError(
                f"bad override {_show(text)}: expected key=value with a dotted key, e.g. detector.conf=0.4",
                source=origin,
            )
        try:
            value = yaml.load(value_text, Loader=_StrictLoader)
        except (yaml.YAMLError, RecursionError) as err:
            raise ConfigError(
                f"cannot parse the value as YAML{_yaml_problem(err)}", key=key_text, source=origin
            ) from None
        blame.append((_set_path(root, parts, value, source, origin), key_text))
    return root, blame


def _set_path(root: dict[Any, Any], parts: list[str], value: Any, source: str, origin: str) -> str:
    """Set ``parts`` to ``value`` in ``root`` (mutating copies it makes itself); return the internal key."""
    cls: type = PipelineConfig
    node = root
    internal = ""
    i = 0
    while True:
        part = parts[i]
        typed = ".".join(parts[: i + 1])
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(f"unknown key (valid: {', '.join(fields)})", key=typed, source=origin)
        tp = _strip_optional(_hints(cls)[part])
        internal = _join(internal, part)
        rest = parts[i + 1 :]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not rest:
                raise ConfigError(
                    f"is a section: set one of its keys, e.g. {typed}.<key>=...", key=typed, source=origin
                )
            node = _child_mapping(node, part, internal, source)
            cls, i = tp, i + 1
            continue
        if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            item_cls = typing.get_args(tp)[0]
            if not rest:
                raise ConfigError(
                    f"is a list: set one item's key, e.g. {typed}.<id>.<key>=...", key=typed, source=origin
                )
            seq = node.get(part)
            if seq is None:
                seq = []
            if not isinstance(seq, list | tuple):
                raise ConfigError(f"expected a list, got {_show(seq)}", key=internal, source=source)
            seq = list(seq)
            node[part] = seq
            index = _find_item(seq, rest[0], item_cls, ".".join(parts[: i + 2]), origin)
            internal = _join(internal, index)
            item = seq[index]
            if not isinstance(item, Mapping):
                raise ConfigError(f"expected a mapping, got {_show(item)}", key=internal, source=source)
            node = seq[index] = dict(item)
            if len(rest) == 1:
                typed = ".".join(parts[: i + 2])
                raise ConfigError(
                    f"is a section: set one of its keys, e.g. {typed}.<key>=...", key=typed, source=origin
                )
            cls, i = item_cls, i + 2
            continue
        if typing.get_origin(tp) is dict:  # free-form (tracker.params): set the whole mapping or a key inside
            for sub in rest:
                node = _child_mapping(node, part, internal, source)
                part, internal = sub, _join(internal, sub)
            node[part] = value
            return internal
        if rest:
            raise ConfigError(
                f"{part} is a value, not a section", key=".".join(parts[: i + 2]), source=origin
            )
        node[part] = _Override(value, Path.cwd()) if fields[part].metadata.get("path") else value
        return internal


def _child_mapping(node: dict[Any, Any], part: str, key: str, source: str) -> dict[Any, Any]:
    child = node.get(part)
    if child is None:
        child = {}
    if not isinstance(child, Mapping):
        raise ConfigError(f"expected a mapping, got {_show(child)}", key=key, source=source)
    node[part] = dict(child)
    return node[part]


def _find_item(seq: list[Any], selector: str, item_cls: type, typed: str, origin: str) -> int:
    if item_cls is CameraConfig:  # cameras are addressed by id
        ids = [item.get("id") for item in seq if isinstance(item, Mapping)]
        for index, item in enumerate(seq):
            if isinstance(item, Mapping) and item.get("id") == selector:
                return index
        valid = ", ".join(i for i in ids if isinstance(i, str)) or "none"
        raise ConfigError(f"no camera with id {selector!r} (cameras: {valid})", key=typed, source=origin)
    if selector.isascii() and selector.isdigit() and int(selector) < len(seq):
        return int(selector)
    raise ConfigError(
        f"no item {selector!r}: items are numbered from 0, the list has {len(seq)}", key=typed, source=origin
    )


# ----------------------------------------------------------------------------------------------------
# Loading


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (same safety) that also rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            k = self.construct_object(key_node, deep=True)
            try:
                duplicate = k in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {_show(k)}",
                    key_node.start_mark,
                )
            seen.add(k)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: BaseException) -> str:
    """Where and what, without the snippet of the offending line that PyYAML adds (it may hold a password)."""
    if isinstance(err, RecursionError):
        return ": nested too deeply"
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "reason", None) or "invalid YAML"
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    position = getattr(err, "position", None)
    return f": {problem}" + (f" (character {position + 1})" if isinstance(position, int) else "")


def _load(
    raw: Any, overrides: Sequence[str], *, base_dir: Path, source: str, env: Mapping[str, str]
) -> PipelineConfig:
    if raw is None:
        raise ConfigError("the configuration is empty (it needs at least a cameras: list)", source=source)
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"the top level must be a mapping of sections (cameras:, detector:, ...), got {_show(raw)}",
            source=source,
        )
    merged, blame = _merge_overrides(raw, overrides, source)
    try:
        return _build_section(PipelineConfig, merged, "", _Ctx(base_dir=base_dir, env=env))
    except ConfigError as err:
        for internal, typed in reversed(blame):
            if err.key == internal or err.key.startswith((internal + ".", internal + "[")):
                origin = f"{source} (--set)" if source else "--set"
                raise ConfigError(err.detail, key=typed + err.key[len(internal) :], source=origin) from None
        raise ConfigError(err.detail, key=err.key, source=source) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read and validate a ``cams.yaml``, then apply ``--set`` overrides (``"detector.conf=0.4"``,
    ``"cameras.cam1.fps=5"``; values are parsed as YAML). Relative paths resolve against the file's folder.

    Raises ConfigError (one line, naming the file and the key) for a missing or unreadable file, a YAML syntax
    error (with its line), and any invalid value or override; no other exception escapes for bad input.
    """
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=name) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML file", source=name) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", source=name) from None
    except OSError as err:
        raise ConfigError(
            f"cannot read the file: {err.strerror or type(err).__name__}", source=name
        ) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"YAML syntax error{_yaml_problem(err)}", source=name) from None
    return _load(raw, overrides, base_dir=path.absolute().parent, source=name, env=os.environ)


def config_from_dict(
    data: Any,
    *,
    base_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> PipelineConfig:
    """Validate an already-parsed config mapping (as ``yaml.safe_load`` returns it).

    Relative paths resolve against ``base_dir`` (default: the working directory); ``${NAME}`` uses ``env``
    (default: ``os.environ``). ``source`` names the input in error messages. Raises ConfigError only.
    """
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    return _load(data, (), base_dir=base, source=source, env=os.environ if env is None else env)


def apply_overrides(cfg: PipelineConfig, overrides: Sequence[str]) -> PipelineConfig:
    """Return ``cfg`` with ``key=value`` overrides applied and the result validated again.

    Relative paths in override values resolve against the working directory; ``${NAME}`` in them is
    substituted. Raises ConfigError whose source is ``--set``.
    """
    if not overrides:
        return cfg
    raw = _to_plain(cfg, for_log=False)
    return _load(raw, overrides, base_dir=Path.cwd(), source="", env=os.environ)


def _to_plain(obj: Any, *, for_log: bool) -> Any:
    if isinstance(obj, _Section):
        out = {}
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if isinstance(value, str) and for_log and f.metadata.get("secret"):
                value = redact_url(value)
            elif isinstance(value, str) and not for_log and f.metadata.get("env"):
                value = value.replace("$", "$$")  # already substituted: keep it literal when reloaded
            out[f.name] = _to_plain(value, for_log=for_log)
        return out
    if isinstance(obj, list | tuple):
        return [_to_plain(v, for_log=for_log) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v, for_log=for_log) for k, v in obj.items()}
    if for_log and isinstance(obj, dt.date):
        return obj.isoformat()
    return obj


def config_to_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """Plain data (dicts, lists, str, numbers, None; times as ISO 8601 strings) for logging. Passwords in
    ``queue.redis_url``, ``db.url`` and camera URLs are replaced by ``***``; the result cannot be reloaded
    to the same config when it had secrets."""
    return _to_plain(cfg, for_log=True)
