"""Tests of the cams.yaml schema (pipeline/config/__init__.py): defaults, the example file, every error path,
override precedence, path resolution, secrets, ${ENV} substitution, and a hypothesis fuzz of the loader."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.samples import sample_key
from pipeline.config import (
    CameraConfig,
    ConfigError,
    DBConfig,
    DetectorConfig,
    LiveConfig,
    MatcherConfig,
    PipelineConfig,
    QueueConfig,
    ReIDConfig,
    ReplayConfig,
    TopologyConfig,
    TopologyLink,
    TrackerConfig,
    TrackletConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from pipeline.config.schema import DEFAULT_DETECTOR_WEIGHTS, PrivacyConfig, RetentionConfig
from pipeline.runtime.compose import make_session_key

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "cams.example.yaml"
SECRET = "s3cretPw"

BASE: dict[str, Any] = {
    "cameras": [
        {"id": "cam1", "source": "videos/a.mp4"},
        {"id": "cam2", "source": "videos/b.mp4"},
    ]
}

SECTIONS = {
    "detector": DetectorConfig,
    "tracker": TrackerConfig,
    "tracklets": TrackletConfig,
    "replay": ReplayConfig,
    "live": LiveConfig,
    "reid": ReIDConfig,
    "matcher": MatcherConfig,
    "topology": TopologyConfig,
    "queue": QueueConfig,
    "db": DBConfig,
    "retention": RetentionConfig,
    "privacy": PrivacyConfig,
}


def _with(path: str, value: Any, base: dict[str, Any] = BASE) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` set (integers index lists)."""
    data = copy.deepcopy(base)
    node: Any = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def _write(tmp_path: Path, data: Any, name: str = "cams.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8"
    )
    return path


def _load(tmp_path: Path, data: Any, overrides: tuple[str, ...] = ()) -> PipelineConfig:
    return load_config(_write(tmp_path, data), overrides)


def _assert_one_line(err: ConfigError) -> str:
    message = str(err)
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    return message


# ------------------------------------------------------------------------------------------------------------
# Defaults and the example file


def test_defaults_are_the_documented_values(tmp_path: Path) -> None:
    cfg = _load(tmp_path, BASE)
    assert cfg.detector == DetectorConfig()
    assert (cfg.detector.weights, cfg.detector.imgsz, cfg.detector.conf, cfg.detector.iou) == (
        DEFAULT_DETECTOR_WEIGHTS,
        640,
        0.25,
        0.7,
    )
    assert (cfg.detector.device, cfg.detector.batch, cfg.detector.classes) == ("auto", 4, (0,))
    assert (cfg.tracker.name, cfg.tracker.params) == ("ocsort", {})
    t = cfg.tracklets
    assert (t.min_length, t.max_length, t.max_gap, t.min_box_height, t.min_box_width) == (4, 300, 30, 40, 16)
    assert (t.min_conf, t.border_margin, t.max_crops, t.crop_height, t.crop_width) == (0.3, 2, 32, 256, 128)
    assert t.forget_after == 9000
    assert (cfg.replay.realtime, cfg.replay.max_frames, cfg.replay.loop) == (False, None, False)
    live = cfg.live
    assert (live.read_timeout_s, live.open_timeout_s, live.reconnect_initial_s, live.reconnect_max_s) == (
        5.0,
        10.0,
        0.5,
        30.0,
    )
    assert cfg.reid == ReIDConfig(
        checkpoint=None,
        device="auto",
        batch_size=8,
        max_wait_ms=200,
        reclaim_idle_ms=30_000,
        num_frames=None,
        group="reid",
    )
    assert (cfg.matcher.threshold, cfg.matcher.max_prototypes) == (None, 10)
    assert (cfg.matcher.window_s, cfg.matcher.max_wait_s, cfg.matcher.group) == (1.0, 60.0, "matcher")
    assert cfg.topology.links == () and cfg.topology.overlaps == ()
    q = cfg.queue
    assert (q.redis_url, q.stream_prefix, q.maxlen, q.max_deliveries) == (None, "reid", 10000, 5)
    assert cfg.db.url == "sqlite:///reid.db"
    cam = cfg.cameras[0]
    assert (cam.start_time, cam.fps, cam.roi, cam.crop, cam.enabled) == (None, None, None, None, True)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_an_empty_section_takes_the_defaults(tmp_path: Path, section: str) -> None:
    cfg = _load(tmp_path, {**BASE, section: None})
    assert getattr(cfg, section) == SECTIONS[section]()


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert [c.id for c in cfg.cameras] == ["cam1", "cam2"]
    assert all(c.start_time is not None and c.start_time.tzinfo is not None for c in cfg.cameras)
    assert cfg.cameras[0].start_time < cfg.cameras[1].start_time
    assert cfg.detector.weights.endswith("shared/assets/detectors/yolo11n_int8_openvino_model")
    assert Path(cfg.detector.weights).is_absolute()
    assert cfg.topology.links == (TopologyLink(cameras=("cam1", "cam2"), min_transit_s=0, max_transit_s=120),)


def test_example_names_every_key() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert list(raw) == [f.name for f in dataclasses.fields(PipelineConfig)]
    for name, cls in SECTIONS.items():
        assert list(raw[name]) == [f.name for f in dataclasses.fields(cls)], name
    for cam in raw["cameras"]:
        assert list(cam) == [f.name for f in dataclasses.fields(CameraConfig)]
    for link in raw["topology"]["links"]:
        assert sorted(link) == sorted(f.name for f in dataclasses.fields(TopologyLink))


def test_default_detector_weights_are_the_shared_openvino_model() -> None:
    """The default names the shared export next to the repository, a known sample (so it is fetched when
    ../shared is absent), and exists when ../shared is there."""
    weights = DetectorConfig().weights
    assert weights == DEFAULT_DETECTOR_WEIGHTS and Path(weights).is_absolute()
    assert sample_key(weights) == "assets/detectors/yolo11n_int8_openvino_model"
    if not (REPO.parent / "shared" / "assets" / "detectors").is_dir():
        pytest.skip(f"needs {REPO.parent / 'shared'} (the team's shared folder), absent here")
    assert (Path(weights) / "yolo11n.xml").is_file()


def test_example_sources_resolve_to_existing_files() -> None:
    shared = REPO.parent / "shared"  # where the example's ../../shared/ paths point
    if not (shared / "data" / "intel-sample-videos").is_dir():
        pytest.skip(f"needs {shared}/data/intel-sample-videos (the team's shared data folder), absent here")
    cfg = load_config(EXAMPLE)
    for cam in cfg.cameras:
        assert cam.source_kind == "file"
        assert Path(cam.source).is_file(), cam.source
    assert Path(cfg.detector.weights).is_dir()


# ------------------------------------------------------------------------------------------------------------
# Every error path: ConfigError, one line, naming the file and the key


ERROR_CASES = [
    # (case id, YAML data, overrides, key in the message, fragment of the message)
    (
        "unknown top-level key",
        {**BASE, "detectr": {}},
        (),
        "detectr",
        "unknown key (valid: cameras, detector",
    ),
    ("unknown section key", _with("detector.confidence", 0.3), (), "detector.confidence", "unknown key"),
    (
        "unknown camera key",
        _with("cameras.1", {"id": "cam2", "sourc": "b.mp4"}),
        (),
        "cameras[1].sourc",
        "unknown key (valid: id, source, start_time, fps, roi, crop, enabled)",
    ),
    (
        "unknown link key",
        _with("topology.links", [{"cameras": ["cam1", "cam2"], "max_transit": 5}]),
        (),
        "topology.links[0].max_transit",
        "unknown key",
    ),
    ("non-string key", {**BASE, 3: 1}, (), "3", "unknown key"),
    (
        "string for a float",
        _with("detector.conf", "high"),
        (),
        "detector.conf",
        "expected a number, got 'high'",
    ),
    (
        "string for an int",
        _with("tracklets.max_length", "300"),
        (),
        "tracklets.max_length",
        "expected an integer",
    ),
    ("float for an int", _with("detector.imgsz", 640.0), (), "detector.imgsz", "expected an integer"),
    ("bool for an int", _with("detector.batch", True), (), "detector.batch", "expected an integer, got True"),
    ("bool for a float", _with("matcher.threshold", False), (), "matcher.threshold", "expected a number"),
    (
        "huge int for a float",
        _with("live.reconnect_max_s", 10**400),
        (),
        "live.reconnect_max_s",
        "out of range",
    ),
    ("infinite float", _with("live.read_timeout_s", float("inf")), (), "live.read_timeout_s", "finite"),
    ("string for a bool", _with("replay.realtime", "sure"), (), "replay.realtime", "expected true or false"),
    ("string for loop", _with("replay.loop", "yes"), (), "replay.loop", "expected true or false, got 'yes'"),
    ("int for loop", _with("replay.loop", 1), (), "replay.loop", "expected true or false, got 1"),
    (
        "override loop",
        BASE,
        ("replay.loop=forever",),
        "replay.loop",
        "(--set): replay.loop: expected true or",
    ),
    ("int for a string", _with("cameras.0.id", 1), (), "cameras[0].id", "expected a string, got 1"),
    ("scalar for a list", _with("detector.classes", 0), (), "detector.classes", "expected a list"),
    (
        "string in a list",
        _with("detector.classes", [0, "car"]),
        (),
        "detector.classes[1]",
        "expected an integer",
    ),
    ("list for params", _with("tracker.params", [1, 2]), (), "tracker.params", "expected a mapping"),
    ("scalar for a section", {**BASE, "detector": 5}, (), "detector", "expected a mapping, got 5"),
    ("mapping for cameras", {"cameras": {"cam1": "a.mp4"}}, (), "cameras", "expected a list"),
    ("camera not a mapping", {"cameras": ["a.mp4"]}, (), "cameras[0]", "expected a mapping"),
    ("bad ISO time", _with("cameras.0.start_time", "yesterday"), (), "cameras[0].start_time", "ISO 8601"),
    (
        "bad month",
        _with("cameras.0.start_time", "2024-13-01T00:00:00"),
        (),
        "cameras[0].start_time",
        "ISO 8601",
    ),
    ("date only", _with("cameras.0.start_time", "2024-05-14"), (), "cameras[0].start_time", "date and time"),
    (
        "YAML date",
        _with("cameras.0.start_time", dt.date(2024, 5, 14)),
        (),
        "cameras[0].start_time",
        "date only",
    ),
    ("number for a time", _with("cameras.0.start_time", 1715670000), (), "cameras[0].start_time", "ISO 8601"),
    (
        "duplicate camera ids",
        _with("cameras.1.id", "cam1"),
        (),
        "cameras[1].id",
        "duplicate camera id 'cam1'",
    ),
    ("camera id with a space", _with("cameras.0.id", "cam 1"), (), "cameras[0].id", "letters, digits"),
    ("camera id with a slash", _with("cameras.0.id", "../x"), (), "cameras[0].id", "letters, digits"),
    ("empty camera id", _with("cameras.0.id", ""), (), "cameras[0].id", "non-empty"),
    ("empty source", _with("cameras.0.source", ""), (), "cameras[0].source", "must not be empty"),
    ("missing source", _with("cameras.0", {"id": "cam1"}), (), "cameras[0].source", "missing required key"),
    ("unsupported scheme", _with("cameras.0.source", "ftp://h/a.mp4"), (), "cameras[0].source", "'ftp://'"),
    ("negative webcam", _with("cameras.0.source", -1), (), "cameras[0].source", "webcam index"),
    ("empty cameras", {"cameras": []}, (), "cameras", "at least one camera"),
    ("missing cameras", {"detector": {}}, (), "cameras", "missing required key"),
    (
        "roi with 2 points",
        _with("cameras.0.roi", [[0, 0], [10, 10]]),
        (),
        "cameras[0].roi",
        "at least 3 points",
    ),
    ("flat roi", _with("cameras.0.roi", [[0, 0], [5, 5], [10, 10]]), (), "cameras[0].roi", "zero area"),
    (
        "roi point of 3",
        _with("cameras.0.roi", [[0, 0, 1], [9, 0], [9, 9]]),
        (),
        "cameras[0].roi[0]",
        "2 items",
    ),
    (
        "roi string point",
        _with("cameras.0.roi", ["a", [9, 0], [9, 9]]),
        (),
        "cameras[0].roi[0]",
        "expected a list",
    ),
    (
        "crop of 3",
        _with("cameras.0.crop", [0, 0, 9]),
        (),
        "cameras[0].crop",
        "expected a list of 4 items, got 3",
    ),
    ("crop float", _with("cameras.0.crop", [0, 0, 9.5, 9]), (), "cameras[0].crop[2]", "expected an integer"),
    ("crop string", _with("cameras.0.crop", "0,0,9,9"), (), "cameras[0].crop", "expected a list"),
    (
        "crop negative",
        _with("cameras.0.crop", [-1, 0, 9, 9]),
        (),
        "cameras[0].crop",
        "x1 and y1 must be >= 0",
    ),
    ("crop empty", _with("cameras.0.crop", [5, 0, 5, 9]), (), "cameras[0].crop", "needs x1 < x2 and y1 < y2"),
    (
        "crop override",
        BASE,
        ("cameras.cam1.crop=[0, 9, 9, 0]",),
        "cameras.cam1.crop",
        "needs x1 < x2 and y1 < y2",
    ),
    ("negative fps", _with("cameras.0.fps", -5), (), "cameras[0].fps", "must be > 0"),
    ("zero fps", _with("cameras.1.fps", 0), (), "cameras[1].fps", "must be > 0"),
    ("conf above 1", _with("detector.conf", 1.5), (), "detector.conf", "between 0 and 1"),
    ("negative iou", _with("detector.iou", -0.1), (), "detector.iou", "> 0 and <= 1"),
    ("zero iou", _with("detector.iou", 0), (), "detector.iou", "> 0 and <= 1, got 0"),
    ("iou above 1", _with("detector.iou", 1.01), (), "detector.iou", "> 0 and <= 1"),
    ("imgsz not /32", _with("detector.imgsz", 100), (), "detector.imgsz", "multiple of 32"),
    ("bad device", _with("detector.device", "gpu"), (), "detector.device", "cuda:N"),
    ("zero batch", _with("detector.batch", 0), (), "detector.batch", ">= 1"),
    ("no classes", _with("detector.classes", []), (), "detector.classes", "at least one"),
    ("negative class", _with("detector.classes", [0, -1]), (), "detector.classes[1]", ">= 0"),
    ("empty weights", _with("detector.weights", ""), (), "detector.weights", "must not be empty"),
    ("empty tracker", _with("tracker.name", ""), (), "tracker.name", "must not be empty"),
    ("params int key", _with("tracker.params", {1: 2}), (), "tracker.params", "keys must be strings"),
    (
        "min > max length",
        _with("tracklets.min_length", 500, _with("tracklets.max_crops", 2000)),
        (),
        "tracklets.min_length",
        "<= max_length",
    ),
    (
        "min_length > max_crops / 2",
        _with("tracklets.min_length", 17),
        (),
        "tracklets.min_length",
        "<= ceil(max_crops / 2) = 16",
    ),
    ("min_length 0", _with("tracklets.min_length", 0), (), "tracklets.min_length", ">= 1"),
    ("zero box height", _with("tracklets.min_box_height", 0), (), "tracklets.min_box_height", "> 0"),
    ("zero box width", _with("tracklets.min_box_width", 0), (), "tracklets.min_box_width", "> 0"),
    ("zero crop height", _with("tracklets.crop_height", 0), (), "tracklets.crop_height", ">= 1"),
    ("negative forget", _with("tracklets.forget_after", -1), (), "tracklets.forget_after", ">= 0"),
    ("zero max_crops", _with("tracklets.max_crops", 0), (), "tracklets.max_crops", ">= 1"),
    ("negative gap", _with("tracklets.max_gap", -1), (), "tracklets.max_gap", ">= 0"),
    ("min_conf above 1", _with("tracklets.min_conf", 2), (), "tracklets.min_conf", "between 0 and 1"),
    ("zero max_frames", _with("replay.max_frames", 0), (), "replay.max_frames", ">= 1"),
    ("zero timeout", _with("live.read_timeout_s", 0), (), "live.read_timeout_s", "> 0"),
    ("zero open timeout", _with("live.open_timeout_s", 0), (), "live.open_timeout_s", "> 0"),
    (
        "reconnect max < initial",
        _with("live", {"reconnect_initial_s": 10, "reconnect_max_s": 1}),
        (),
        "live.reconnect_max_s",
        ">= reconnect_initial_s",
    ),
    ("reid batch 0", _with("reid.batch_size", 0), (), "reid.batch_size", ">= 1"),
    ("reid device", _with("reid.device", "tpu"), (), "reid.device", "cuda:N"),
    ("reid num_frames 0", _with("reid.num_frames", 0), (), "reid.num_frames", ">= 1"),
    ("reid num_frames str", _with("reid.num_frames", "six"), (), "reid.num_frames", "expected an integer"),
    ("reid reclaim 0", _with("reid.reclaim_idle_ms", 0), (), "reid.reclaim_idle_ms", ">= 1"),
    ("reid group", _with("reid.group", "a b"), (), "reid.group", "letters, digits"),
    ("matcher group", _with("matcher.group", ""), (), "matcher.group", "non-empty"),
    ("zero deliveries", _with("queue.max_deliveries", 0), (), "queue.max_deliveries", ">= 1"),
    ("threshold > 1", _with("matcher.threshold", 1.2), (), "matcher.threshold", "between -1 and 1"),
    (
        "topology unknown camera",
        _with("topology.links", [{"cameras": ["cam1", "cam9"], "max_transit_s": 60}]),
        (),
        "topology.links[0].cameras[1]",
        "unknown camera 'cam9' (cameras: cam1, cam2)",
    ),
    (
        "overlap unknown camera",
        _with("topology.overlaps", [["cam9", "cam1"]]),
        (),
        "topology.overlaps[0][0]",
        "unknown camera 'cam9'",
    ),
    (
        "min > max transit",
        _with("topology.links", [{"cameras": ["cam1", "cam2"], "min_transit_s": 90, "max_transit_s": 60}]),
        (),
        "topology.links[0].max_transit_s",
        ">= min_transit_s",
    ),
    (
        "missing max transit",
        _with("topology.links", [{"cameras": ["cam1", "cam2"]}]),
        (),
        "topology.links[0].max_transit_s",
        "missing required key",
    ),
    (
        "link to itself",
        _with("topology.links", [{"cameras": ["cam1", "cam1"], "max_transit_s": 5}]),
        (),
        "topology.links[0].cameras",
        "two different cameras",
    ),
    (
        "link of 3 cameras",
        _with("topology.links", [{"cameras": ["cam1", "cam2", "cam1"], "max_transit_s": 5}]),
        (),
        "topology.links[0].cameras",
        "2 items",
    ),
    (
        "duplicate link",
        _with(
            "topology.links",
            [
                {"cameras": ["cam1", "cam2"], "max_transit_s": 5},
                {"cameras": ["cam2", "cam1"], "max_transit_s": 9},
            ],
        ),
        (),
        "topology.links[1].cameras",
        "duplicates links[0]",
    ),
    ("redis scheme", _with("queue.redis_url", "http://h:6379"), (), "queue.redis_url", "redis://"),
    ("stream prefix", _with("queue.stream_prefix", "a b"), (), "queue.stream_prefix", "letters"),
    ("zero maxlen", _with("queue.maxlen", 0), (), "queue.maxlen", ">= 1"),
    ("db url no scheme", _with("db.url", "reid.db"), (), "db.url", "SQLAlchemy URL"),
    ("unset env var", _with("db.url", "postgresql://u:${NO_SUCH_VAR_7}@h/db"), (), "db.url", "NO_SUCH_VAR_7"),
    (
        "malformed env ref",
        _with("queue.redis_url", "redis://:${1x}@h"),
        (),
        "queue.redis_url",
        "malformed ${",
    ),
    # Overrides: the message names the file, says --set, and gives the key as typed.
    ("override of a missing key", BASE, ("detector.nope=1",), "detector.nope", "(--set)"),
    ("override of a missing section", BASE, ("detecter.conf=1",), "detecter", "unknown key (valid: cameras,"),
    (
        "override of a missing camera",
        BASE,
        ("cameras.cam9.fps=5",),
        "cameras.cam9",
        "no camera with id 'cam9'",
    ),
    (
        "override of a missing link",
        BASE,
        ("topology.links.0.max_transit_s=5",),
        "topology.links.0",
        "no item",
    ),
    ("override below a value", BASE, ("detector.conf.x=1",), "detector.conf.x", "not a section"),
    ("override of a section", BASE, ("detector=1",), "detector", "is a section"),
    ("override of a camera", BASE, ("cameras.cam1=1",), "cameras.cam1", "is a section"),
    ("override without =", BASE, ("detector.conf",), "", "bad override 'detector.conf'"),
    ("override without key", BASE, ("=0.4",), "", "expected key=value"),
    ("override empty part", BASE, ("detector..conf=1",), "", "bad override"),
    ("override bad value YAML", BASE, ("detector.classes=[0,",), "detector.classes", "cannot parse"),
    (
        "override wrong type",
        BASE,
        ("detector.conf=high",),
        "detector.conf",
        "(--set): detector.conf: expected a",
    ),
    ("override negative fps", BASE, ("cameras.cam2.fps=-1",), "cameras.cam2.fps", "(--set)"),
    ("override bad roi", BASE, ("cameras.cam1.roi=[[0, 0], [1, 1]]",), "cameras.cam1.roi", "at least 3"),
    ("override of min_length", BASE, ("tracklets.min_length=301",), "tracklets.min_length", "(--set)"),
    ("retention of zero days", _with("retention.days", 0), (), "retention.days", "must be > 0"),
    ("negative retention", _with("retention.days", -1.5), (), "retention.days", "must be > 0"),
    ("retention as text", _with("retention.days", "30d"), (), "retention.days", "expected a number"),
    ("override retention", BASE, ("retention.days=0",), "retention.days", "(--set)"),
    (
        "zero prune interval",
        _with("retention.prune_every_s", 0),
        (),
        "retention.prune_every_s",
        "must be > 0",
    ),
]


@pytest.mark.parametrize(
    ("data", "overrides", "key", "fragment"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_invalid_config_raises_one_line_config_error(
    tmp_path: Path, data: Any, overrides: tuple[str, ...], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data, overrides)
    message = _assert_one_line(info.value)
    assert message.startswith(str(tmp_path / "cams.yaml")), message
    assert f": {key}: " in message if key else True, message
    assert fragment in message, message


def test_error_in_the_yaml_is_not_blamed_on_an_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _with("detector.conf", "high"), ("cameras.cam1.fps=5",))
    assert "(--set)" not in str(info.value)
    assert info.value.key == "detector.conf"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("cameras:\n  - id: cam1\n    source: a.mp4\n  detector: {}\n", "line 4"),
        ("cameras: [\n", "line 2"),
        ("cameras:\n\t- id: cam1\n", "line 2"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("cameras: *nowhere\n", "undefined alias"),
        ("a: \x00\n", "YAML syntax error"),
        ("? [a, b]\n: 1\n", "unhashable key"),
    ],
    ids=[
        "bad indentation",
        "unclosed flow",
        "tab",
        "duplicate key",
        "undefined alias",
        "control character",
        "list key",
    ],
)
def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    message = _assert_one_line(info.value)
    assert "cams.yaml" in message and "YAML syntax error" in message and fragment in message, message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("42\n", "got 42"),
    ],
    ids=["empty file", "only comments", "a list", "a number"],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    message = _assert_one_line(info.value)
    assert message.startswith(str(tmp_path / "cams.yaml")) and fragment in message, message


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("missing.yaml", "file not found"), ("", "is a directory")],
    ids=["missing", "directory"],
)
def test_unreadable_file_names_the_file(tmp_path: Path, name: str, fragment: str) -> None:
    path = tmp_path / name
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = _assert_one_line(info.value)
    assert str(path) in message and fragment in message, message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "cams.yaml"
    path.write_bytes(b"cameras: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cams.yaml: is not UTF-8 text"):
        load_config(path)


def test_config_error_is_a_value_error_with_parts() -> None:
    err = ConfigError("bad\nthing", key="a.b", source="x.yaml")
    assert isinstance(err, ValueError)
    assert (err.source, err.key, err.detail) == ("x.yaml", "a.b", "bad\nthing")
    assert str(err) == "x.yaml: a.b: bad\\nthing"


# ------------------------------------------------------------------------------------------------------------
# Precedence and overrides


def test_precedence_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    data = _with("detector.conf", 0.3)
    assert _load(tmp_path, BASE).detector.conf == 0.25
    assert _load(tmp_path, data).detector.conf == 0.3
    assert _load(tmp_path, data, ("detector.conf=0.4",)).detector.conf == 0.4
    assert _load(tmp_path, data, ("detector.conf=0.4", "detector.conf=0.5")).detector.conf == 0.5


@pytest.mark.parametrize(
    ("override", "read", "expected"),
    [
        ("tracklets.max_length=500", lambda c: c.tracklets.max_length, 500),
        ("cameras.cam2.fps=5", lambda c: (c.cameras[0].fps, c.cameras[1].fps), (None, 5.0)),
        ("cameras.cam1.enabled=false", lambda c: [x.id for x in c.enabled_cameras], ["cam2"]),
        (
            "cameras.cam1.start_time=2024-05-14T09:00:00Z",
            lambda c: c.cameras[0].start_time.utcoffset(),
            dt.timedelta(0),
        ),
        ("detector.classes=[0, 2]", lambda c: c.detector.classes, (0, 2)),
        ("detector.weights=yolo11s.pt", lambda c: c.detector.weights, "yolo11s.pt"),
        ("replay.max_frames=null", lambda c: c.replay.max_frames, None),
        ("replay.loop=true", lambda c: c.replay.loop, True),
        ("tracker.params.track_buffer=60", lambda c: c.tracker.params, {"track_buffer": 60}),
        ("tracker.params.a.b=1", lambda c: c.tracker.params, {"a": {"b": 1}}),
        ("tracker.params={x: 1}", lambda c: c.tracker.params, {"x": 1}),
        ("queue.redis_url=redis://localhost:6379/0", lambda c: c.queue.redis_url, "redis://localhost:6379/0"),
        ("cameras.cam1.source=rtsp://h/s", lambda c: c.cameras[0].source_kind, "live"),
        (" detector.conf = 0.5", lambda c: c.detector.conf, 0.5),
    ],
)
def test_override_sets_the_key(tmp_path: Path, override: str, read: Any, expected: Any) -> None:
    assert read(_load(tmp_path, BASE, (override,))) == expected
    assert read(apply_overrides(_load(tmp_path, BASE), [override])) == expected


def test_overrides_are_validated_together_with_the_yaml(tmp_path: Path) -> None:
    data = _with("tracklets.min_length", 400)  # invalid alone (> max_length 300, > max_crops / 2)
    cfg = _load(tmp_path, data, ("tracklets.max_length=500", "tracklets.max_crops=800"))
    assert (cfg.tracklets.min_length, cfg.tracklets.max_length) == (400, 500)


def test_topology_link_override_by_index(tmp_path: Path) -> None:
    data = _with("topology.links", [{"cameras": ["cam1", "cam2"], "max_transit_s": 60}])
    cfg = _load(tmp_path, data, ("topology.links.0.max_transit_s=90",))
    assert cfg.topology.links[0].max_transit_s == 90.0


def test_apply_overrides_leaves_the_rest_and_the_input_unchanged(tmp_path: Path) -> None:
    cfg = _load(tmp_path, _with("cameras.0.start_time", "2024-05-14T09:00:00+02:00"))
    new = apply_overrides(cfg, ["detector.conf=0.5"])
    assert new.detector.conf == 0.5 and cfg.detector.conf == 0.25
    assert dataclasses.replace(new, detector=cfg.detector) == cfg
    assert apply_overrides(cfg, []) is cfg


def test_apply_overrides_error_names_set_and_key(tmp_path: Path) -> None:
    cfg = _load(tmp_path, BASE)
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, ["tracklets.max_crops=0"])
    assert _assert_one_line(info.value).startswith("--set: tracklets.max_crops: must be >= 1")


# ------------------------------------------------------------------------------------------------------------
# Sources, paths and times


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("a.mp4", "file"),
        ("rec/people-detection.264", "file"),
        ("MOT17-02/img1", "images"),
        ("frames/run.2024/", "images"),
        ("rtsp://user:pw@10.0.0.5:554/stream", "live"),
        ("RTSPS://cam/stream", "live"),
        ("http://cam/mjpg", "live"),
        ("https://cam/video.mp4", "live"),
        ("rtmp://server/live/cam", "live"),
        ("udp://239.0.0.1:1234", "live"),
        ("tcp://10.0.0.5:8554", "live"),
        ("0", "webcam"),
        (1, "webcam"),
    ],
)
def test_source_kind(tmp_path: Path, source: Any, kind: str) -> None:
    cfg = _load(tmp_path, _with("cameras.0.source", source))
    assert cfg.cameras[0].source_kind == kind
    assert isinstance(cfg.cameras[0].source, str)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("videos/a.mp4", "{yaml_dir}/videos/a.mp4"),
        ("../a.mp4", "{yaml_parent}/a.mp4"),
        ("img1/", "{yaml_dir}/img1/"),
        ("/abs/a.mp4", "/abs/a.mp4"),
        ("rtsp://h/../s", "rtsp://h/../s"),
        ("3", "3"),
    ],
)
def test_relative_sources_resolve_against_the_yaml_folder(tmp_path: Path, source: str, expected: str) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    cfg = load_config(_write(folder, _with("cameras.0.source", source)))
    assert cfg.cameras[0].source == expected.format(yaml_dir=folder, yaml_parent=tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("detector.weights", "yolo11n.pt", "yolo11n.pt"),
        ("detector.weights", "models/det.pt", "{yaml_dir}/models/det.pt"),
        ("reid.checkpoint", "drsta.pt", "{yaml_dir}/drsta.pt"),
        ("reid.backbone_weights", "../r50.pth", "{yaml_parent}/r50.pth"),
        ("reid.checkpoint", None, None),
    ],
)
def test_model_paths_resolve_against_the_yaml_folder(
    tmp_path: Path, field: str, value: Any, expected: Any
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    cfg = load_config(_write(folder, _with(field, value)))
    section, name = field.split(".")
    want = expected.format(yaml_dir=folder, yaml_parent=tmp_path) if expected else expected
    assert getattr(getattr(cfg, section), name) == want


def test_override_paths_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(_write(folder, BASE), ["cameras.cam2.source=clips/c.mp4"])
    assert cfg.cameras[0].source == str(folder / "videos" / "a.mp4")
    assert cfg.cameras[1].source == str(work / "clips" / "c.mp4")
    # a whole list given with --set is an override too: its paths resolve against the working directory
    cfg = load_config(_write(folder, BASE), ["cameras=[{id: x, source: clips/x.mp4}, {id: y, source: 0}]"])
    assert [(c.id, c.source) for c in cfg.cameras] == [("x", str(work / "clips" / "x.mp4")), ("y", "0")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-14T09:00:00+02:00", dt.datetime(2024, 5, 14, 7, 0, tzinfo=dt.UTC)),
        ("2024-05-14T09:00:00Z", dt.datetime(2024, 5, 14, 9, 0, tzinfo=dt.UTC)),
        ("2024-05-14T09:00:00", dt.datetime(2024, 5, 14, 9, 0, tzinfo=dt.UTC)),
        ("2024-05-14 09:00:00.5", dt.datetime(2024, 5, 14, 9, 0, 0, 500000, tzinfo=dt.UTC)),
        (dt.datetime(2024, 5, 14, 9, 0), dt.datetime(2024, 5, 14, 9, 0, tzinfo=dt.UTC)),
        (None, None),
    ],
    ids=["offset", "Z", "naive is UTC", "space and fraction", "YAML timestamp", "none"],
)
def test_start_time_is_timezone_aware(tmp_path: Path, value: Any, expected: Any) -> None:
    cam = _load(tmp_path, _with("cameras.0.start_time", value)).cameras[0]
    assert cam.start_time == expected
    assert cam.start_time is None or cam.start_time.utcoffset() is not None


def test_yaml_timestamp_with_offset(tmp_path: Path) -> None:
    text = "cameras:\n  - id: c\n    source: a.mp4\n    start_time: 2024-05-14T09:00:00+02:00\n"
    assert load_config(_write(tmp_path, text)).cameras[0].start_time.utcoffset() == dt.timedelta(hours=2)


def test_types_are_normalised(tmp_path: Path) -> None:
    data = _with("cameras.0.roi", [[0, 0], [10, 0], [10, 10]])
    data["cameras"][0]["fps"] = 25
    cfg = _load(tmp_path, data)
    cam = cfg.cameras[0]
    assert cam.roi == ((0.0, 0.0), (10.0, 0.0), (10.0, 10.0)) and isinstance(cam.roi, tuple)
    assert isinstance(cam.fps, float)
    assert isinstance(cfg.cameras, tuple)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (
            lambda: TrackletConfig(min_length=10, max_length=5),
            "TrackletConfig: min_length: must be <= max_length",
        ),
        (lambda: DetectorConfig(conf="high"), "DetectorConfig: conf: expected a number"),
        (lambda: CameraConfig(id="a b", source="x.mp4"), "CameraConfig: id:"),
        (lambda: PipelineConfig(cameras=()), "PipelineConfig: cameras: needs at least one camera"),
    ],
)
def test_sections_built_in_code_are_validated(build: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert fragment in str(info.value)


def test_sections_built_in_code_are_normalised() -> None:
    cam = CameraConfig(id="desk", source=0, roi=[[0, 0], [4, 0], [4, 4]], start_time=dt.datetime(2024, 1, 1))
    assert cam.source == "0" and cam.source_kind == "webcam"
    assert cam.roi == ((0.0, 0.0), (4.0, 0.0), (4.0, 4.0))
    assert cam.start_time.tzinfo is dt.UTC
    cfg = PipelineConfig(cameras=[cam])
    assert cfg.cameras == (cam,) and cfg.camera("desk") is cam
    with pytest.raises(KeyError, match="desk"):
        cfg.camera("door")


# ------------------------------------------------------------------------------------------------------------
# Secrets and environment substitution


def _secret_config(tmp_path: Path) -> PipelineConfig:
    data = _with("queue.redis_url", f"redis://:{SECRET}@redis:6379/0")
    data["db"] = {"url": f"postgresql+psycopg://reid:{SECRET}@db/reid"}
    data["cameras"][1]["source"] = f"rtsp://admin:{SECRET}@10.0.0.5/s"
    return _load(tmp_path, data)


def test_secrets_are_redacted_in_repr_and_dict(tmp_path: Path) -> None:
    cfg = _secret_config(tmp_path)
    assert SECRET in cfg.queue.redis_url and SECRET in cfg.db.url and SECRET in cfg.cameras[1].source
    for text in (
        repr(cfg),
        str(cfg),
        repr(cfg.queue),
        repr(cfg.db),
        repr(cfg.cameras[1]),
        json.dumps(config_to_dict(cfg)),
    ):
        assert SECRET not in text
        assert "***" in text
    assert config_to_dict(cfg)["db"]["url"] == "postgresql+psycopg://reid:***@db/reid"


@pytest.mark.parametrize(
    ("data", "overrides"),
    [
        (_with("queue.redis_url", f"http://:{SECRET}@h"), ()),
        (_with("db.url", f"{SECRET}@nowhere"), ()),
        (_with("cameras.0.source", f"ftp://u:{SECRET}@h/a.mp4"), ()),
        (_with("db", {f"postgresql://u:{SECRET}@h/db": 1}), ()),
        (f"db:\n  url: postgresql://u:{SECRET}@h/db\n  - broken\n", ()),
        (BASE, (f"queue.redis_url=http://:{SECRET}@h",)),
        (BASE, (f"redis://:{SECRET}@h",)),
    ],
    ids=[
        "wrong scheme",
        "no scheme",
        "camera url",
        "secret as a key",
        "yaml error",
        "override",
        "override no key",
    ],
)
def test_secrets_never_appear_in_errors(tmp_path: Path, data: Any, overrides: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, data, overrides)
    assert SECRET not in _assert_one_line(info.value)


def test_env_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REID_TEST_REDIS_PW", SECRET)
    monkeypatch.setenv("REID_TEST_DB_PW", "a${B}c$")  # substituted once: not expanded again
    data = _with("queue.redis_url", "redis://:${REID_TEST_REDIS_PW}@redis:6379/0")
    data["db"] = {"url": "postgresql://reid:${REID_TEST_DB_PW}@db/reid?x=$$y"}
    cfg = _load(tmp_path, data)
    assert cfg.queue.redis_url == f"redis://:{SECRET}@redis:6379/0"
    assert cfg.db.url == "postgresql://reid:a${B}c$@db/reid?x=$y"
    assert SECRET not in repr(cfg)
    again = apply_overrides(cfg, ["detector.conf=0.5"])  # reloading keeps substituted values literal
    assert (again.queue.redis_url, again.db.url) == (cfg.queue.redis_url, cfg.db.url)


def test_env_substitution_in_overrides_and_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REID_TEST_CAM_PW", SECRET)
    data = _with("cameras.0.source", "rtsp://admin:${REID_TEST_CAM_PW}@cam/s")
    cfg = _load(tmp_path, data, ("db.url=postgresql://u:${REID_TEST_CAM_PW}@h/db",))
    assert cfg.cameras[0].source == f"rtsp://admin:{SECRET}@cam/s"
    assert cfg.db.url == f"postgresql://u:{SECRET}@h/db"


def test_unset_env_var_names_key_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REID_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _with("queue.redis_url", "redis://:${REID_TEST_UNSET}@h"))
    message = _assert_one_line(info.value)
    assert "cams.yaml: queue.redis_url: environment variable REID_TEST_UNSET is not set" in message


def test_config_from_dict_uses_the_given_env_and_base(tmp_path: Path) -> None:
    cfg = config_from_dict(
        _with("db.url", "postgresql://u:${PW}@h/db"), base_dir=tmp_path, env={"PW": "x"}, source="inline"
    )
    assert cfg.db.url == "postgresql://u:x@h/db"
    assert cfg.cameras[0].source == str(tmp_path / "videos" / "a.mp4")
    with pytest.raises(ConfigError, match=r"^inline: db.url: environment variable PW is not set$"):
        config_from_dict(_with("db.url", "postgresql://u:${PW}@h/db"), env={}, source="inline")


# ------------------------------------------------------------------------------------------------------------
# The replay session key (pipeline/runtime/compose.py): a digest of what determines the tracklets, loop included


@pytest.mark.parametrize(
    ("overrides", "same"),
    [
        ((), True),
        (("replay.loop=false",), True),
        (("replay.loop=true",), False),
        (("replay.loop=true", "replay.max_frames=100"), False),
        (("replay.max_frames=100",), False),
    ],
)
def test_replay_session_key_depends_on_loop(tmp_path: Path, overrides: tuple[str, ...], same: bool) -> None:
    (tmp_path / "videos").mkdir()
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / "videos" / name).write_bytes(b"footage " + name.encode())
    key = make_session_key(_load(tmp_path, BASE))
    other = make_session_key(_load(tmp_path, BASE, overrides))
    assert key.startswith("replay-") and other.startswith("replay-")
    assert (other == key) is same
    looped = make_session_key(_load(tmp_path, BASE, ("replay.loop=true",)))
    assert (other == looped) is (overrides == ("replay.loop=true",))


# ------------------------------------------------------------------------------------------------------------
# Fuzz: random YAML-ish input gives a config or a ConfigError, never another exception

_SCHEMA = (PipelineConfig, CameraConfig, TopologyLink, *SECTIONS.values())
_FIELD_NAMES = sorted({f.name for cls in _SCHEMA for f in dataclasses.fields(cls)})
_IDS = ["cam1", "cam2", "cam3"]
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=700),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        [
            *_IDS,
            "0",
            "a.mp4",
            "img1/",
            "rtsp://u:pw@h/s",
            "2024-05-14T09:00:00",
            "${UNSET_FUZZ}",
            "$$",
            "auto",
        ]
        + ["cuda:0", "redis://:pw@h", "sqlite:///x.db", "~/v.mp4", "", " "]
    ),
    st.datetimes(),
    st.dates(),
)
_KEYS = st.one_of(st.sampled_from(_FIELD_NAMES), st.text(max_size=6), st.integers(-3, 3))
_YAMLISH = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=10,
)
# Structured configs: each field gets a value of roughly the right type (so checks deep in the tree run),
# about one time in eight anything at all.
_VALUE = _SCALARS | st.lists(_SCALARS, max_size=3) | st.dictionaries(_KEYS, _SCALARS, max_size=3)
_SPECIAL = {
    (CameraConfig, "id"): st.sampled_from(_IDS),
    (CameraConfig, "source"): st.sampled_from(["a.mp4", "img/", "0", "rtsp://u:pw@h/s", "udp://h", "${X}"])
    | st.integers(-1, 3),
    (CameraConfig, "roi"): st.none()
    | st.lists(st.lists(st.floats(-1e3, 1e3) | st.integers(-5, 5), min_size=2, max_size=2), max_size=5),
    (TopologyLink, "cameras"): st.lists(st.sampled_from(_IDS), min_size=1, max_size=3),
    (TopologyConfig, "overlaps"): st.lists(
        st.lists(st.sampled_from(_IDS), min_size=2, max_size=2), max_size=2
    ),
    (PipelineConfig, "cameras"): st.deferred(
        lambda: st.lists(_section(CameraConfig), min_size=1, max_size=3)
    ),
}
_STRINGS = [
    "auto",
    "cpu",
    "cuda:1",
    "gpu",
    "yolo11n.pt",
    "w/x.pt",
    "redis://:pw@h",
    "sqlite:///x.db",
    "",
    "x y",
]


def _mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 7).flatmap(lambda i: _VALUE if i == 0 else good)


def _good(tp: Any) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.none() | _good(next(a for a in args if a is not type(None)))
    if dataclasses.is_dataclass(tp):
        return _section(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_good(args[0]), max_size=4)
        return st.tuples(*map(_good, args)).map(list)
    if origin is dict:
        return st.dictionaries(st.text(max_size=5), _SCALARS, max_size=3)
    simple = {
        bool: st.booleans(),
        int: st.integers(-1, 700),
        float: st.integers(-1, 200) | st.floats(-1.0, 200.0),
        str: st.sampled_from(_STRINGS),
        dt.datetime: st.datetimes() | st.sampled_from(["2024-05-14T09:00:00+02:00", "2024-05-14", "x"]),
    }
    return simple[tp]


def _section(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    hints = typing.get_type_hints(cls)
    values = {
        f.name: _mostly(_SPECIAL[cls, f.name] if (cls, f.name) in _SPECIAL else _good(hints[f.name]))
        for f in dataclasses.fields(cls)
    }
    required = [
        f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING
    ]
    return st.fixed_dictionaries(
        {k: v for k, v in values.items() if k in required},
        optional={k: v for k, v in values.items() if k not in required},
    )


_CONFIG = _section(PipelineConfig)
_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_outcome(run: Any) -> PipelineConfig | None:
    try:
        cfg = run()
    except ConfigError as err:
        _assert_one_line(err)
        return None
    assert isinstance(cfg, PipelineConfig)
    json.dumps(config_to_dict(cfg))
    repr(cfg)
    return cfg


@_FUZZ
@given(data=_CONFIG | _YAMLISH)
def test_fuzz_config_from_dict_returns_config_or_config_error(data: Any) -> None:
    cfg = _check_outcome(lambda: config_from_dict(data, base_dir="/base", env={}))
    if cfg is not None:  # the reload path used by apply_overrides keeps every value
        again = apply_overrides(cfg, ["matcher.max_prototypes=3"])
        assert (again.cameras, again.topology, again.queue, again.db) == (
            cfg.cameras,
            cfg.topology,
            cfg.queue,
            cfg.db,
        )


_DOTTED = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
_DOTTED += [f"cameras.{i}.{f.name}" for i in ["cam1", "nope"] for f in dataclasses.fields(CameraConfig)]
_DOTTED += ["topology.links.0.min_transit_s", "tracker.params.x.y", "cameras", "detector", "a..b", ""]
_OVERRIDE = st.text(max_size=30) | st.builds(
    "{}={}".format,
    st.sampled_from(_DOTTED),
    st.text(max_size=10)
    | st.sampled_from(["1", "-1", "0.5", "null", "[0, 1]", "{a: 1}", "true", "x.mp4", "[", "&a [*a]"]),
)


@_FUZZ
@given(overrides=st.lists(_OVERRIDE, max_size=3))
def test_fuzz_overrides_return_config_or_config_error(overrides: list[str]) -> None:
    base = config_from_dict(
        _with("topology.links", [{"cameras": ["cam1", "cam2"], "max_transit_s": 60}]), base_dir="/base"
    )
    _check_outcome(lambda: apply_overrides(base, overrides))


@settings(_FUZZ, max_examples=100)
@given(text=st.text(max_size=80) | _CONFIG.map(lambda d: yaml.safe_dump(d, default_flow_style=True)))
def test_fuzz_load_config_text_returns_config_or_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cams.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _check_outcome(lambda: load_config(path))


@pytest.mark.parametrize(
    ("days", "expected"),
    [(None, None), (30, 30.0), (0.5, 0.5), (1e-3, 1e-3)],
    ids=["forever", "30", "half", "tiny"],
)
def test_retention_days(tmp_path: Path, days: float | None, expected: float | None) -> None:
    cfg = _load(tmp_path, _with("retention.days", days))
    assert cfg.retention.days == expected and cfg.retention == RetentionConfig(days=expected)
    assert _load(tmp_path, BASE).retention == RetentionConfig(days=None, prune_every_s=600.0)


@pytest.mark.parametrize(("value", "expected"), [(None, False), (False, False), (True, True)])
def test_privacy_blur_heads(tmp_path: Path, value: bool | None, expected: bool) -> None:
    raw = BASE if value is None else _with("privacy.blur_heads", value)
    assert _load(tmp_path, raw).privacy == PrivacyConfig(blur_heads=expected)


def test_privacy_blur_heads_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"privacy\.blur_heads"):
        _load(tmp_path, _with("privacy.blur_heads", "yes"))
