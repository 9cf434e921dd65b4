"""The camera stage end to end on real footage, and its bad-input behaviour through the command line."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
import threading
import time

import cv2
import pytest

from pipeline.camera.detector import PersonDetector
from pipeline.camera.loop import Camera, CameraGroup
from pipeline.camera.mot_io import read_mot
from pipeline.camera.sources import FrameSource, open_source
from pipeline.camera.tracklets import TrackletBuilder
from pipeline.config import DetectorConfig, LiveConfig, TrackletConfig
from tests.conftest import REPO, shared_path
from trackers import build_tracker

# Live settings that give up on a dead stream quickly (the schema's defaults wait seconds).
FAST_LIVE = LiveConfig(read_timeout_s=0.5, reconnect_initial_s=0.2)


@pytest.fixture(scope="module")
def detector():
    weights = str(shared_path("assets/detectors/yolo11n_int8_openvino_model"))
    return PersonDetector.from_config(DetectorConfig(weights=weights, conf=0.3))


def builder(camera_id: str, **settings) -> TrackletBuilder:
    """A tracklet builder with the schema's defaults but ``settings``."""
    return TrackletBuilder.from_config(camera_id, TrackletConfig(**settings), roi=None)


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "run_pipeline.py", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def write_cams(tmp_path, body: str):
    p = tmp_path / "cams.yaml"
    p.write_text(body)
    return p


def cams_yaml(sources: dict[str, str], extra: str = "") -> str:
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    lines = ["cameras:"]
    for cid, src in sources.items():
        lines += [f"  - id: {cid}", f"    source: {src}", '    start_time: "2024-05-14T09:00:00Z"']
    lines += ["detector:", f"  weights: {det}", "tracklets:", "  max_crops: 8", extra]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_until_tracklets_writes_mot_and_tracklets(tmp_path):
    vtest = shared_path("data/vtest/vtest.avi")
    room = shared_path("data/intel-sample-videos/one-by-one-person-detection.mp4")
    cfg = write_cams(tmp_path, cams_yaml({"plaza": str(vtest), "room": str(room)}))
    out = tmp_path / "out"
    r = run_cli(
        "--cameras",
        str(cfg),
        "--until",
        "tracklets",
        "--out",
        str(out),
        "--max-frames",
        "60",
        "--quiet",
        "--save-video",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for cid in ("plaza", "room"):
        rows = read_mot(out / f"{cid}.txt")
        assert rows.shape[1] == 10
        if len(rows):
            assert rows[:, 0].min() >= 1 and rows[:, 0].max() <= 60  # 1-based frames, capped by --max-frames
            assert (rows[:, 4] > 0).all() and (rows[:, 5] > 0).all()  # positive width and height
        assert (out / f"{cid}.mp4").stat().st_size > 10_000
        assert not list(out.glob("*.part"))  # completed files renamed into place
    plaza = read_mot(out / "plaza.txt")
    assert len(plaza) > 100  # ~6 people per frame at conf 0.3 over 60 frames
    lines = (out / "plaza_tracklets.jsonl").read_text().splitlines()
    assert lines, "60 frames of vtest must close at least one tracklet (end of stream flushes)"
    for line in lines:
        t = json.loads(line)
        assert t["camera"] == "plaza" and t["first_frame"] <= t["last_frame"] <= 59
        assert t["start_time"].startswith("2024-05-14T09:00:") and t["num_crops"] >= 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cameras"]["plaza"]["frames"] == 60


def test_a_dead_live_camera_never_stalls_the_others(detector):
    vtest = shared_path("data/vtest/vtest.avi")
    good = open_source("plaza", str(vtest), max_frames=30)
    dead = open_source("door", "http://127.0.0.1:9/stream.ts", live=FAST_LIVE)
    cams = [
        Camera("plaza", good, build_tracker("bytetrack"), builder("plaza")),
        Camera("door", dead, build_tracker("bytetrack"), builder("door")),
    ]
    group = CameraGroup(cams, detector.detect, batch=2)
    done = threading.Event()
    result = {}

    def run():
        result.update(group.run())
        done.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = time.monotonic() + 120
    while cams[0].stats.frames < 30 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cams[0].stats.frames == 30  # the recorded camera finished while the live one was down
    health = group.health()["door"]
    assert not health.connected and health.last_error
    group.stop()
    assert done.wait(30)
    assert result["door"].frames == 0


def test_tracklets_are_numbered_and_watermarks_bound_what_follows(detector):
    """The order the matcher relies on (docs/matcher.md, "Order"), on real footage: per camera, tracklets
    numbered 0, 1, ... in publication order; every tracklet published after a watermark ends at or after it;
    markers count up, end with a final one, and a live source that is down reports itself idle."""
    vtest = shared_path("data/vtest/vtest.avi")
    good = open_source("plaza", str(vtest), max_frames=240)
    dead = open_source("door", "http://127.0.0.1:9/stream.ts", live=FAST_LIVE)
    cams = [
        Camera("plaza", good, build_tracker("bytetrack"), builder("plaza", max_gap=10, max_length=60)),
        Camera("door", dead, build_tracker("bytetrack"), builder("door")),
    ]
    tracklets, markers = [], []
    group = CameraGroup(
        cams, detector.detect, batch=2, on_tracklet=tracklets.append, on_progress=markers.append,
        progress_every_s=0.2,
    )  # fmt: skip
    threading.Thread(target=group.run, daemon=True).start()
    deadline = time.monotonic() + 120
    while cams[0].stats.wall_s == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    group.stop()
    time.sleep(1.0)
    assert len(tracklets) >= 10
    assert [t.order.seq for t in tracklets] == list(range(len(tracklets)))
    assert any(t.chunk > 0 for t in tracklets)  # max_length cut some tracks into chunks
    for k, t in enumerate(tracklets):
        assert all(later.end_time >= t.order.watermark for later in tracklets[k + 1 :]), k
    plaza = [m for m in markers if m.camera_id == "plaza"]
    assert [m.n for m in plaza] == list(range(len(plaza))) and len(plaza) >= 3
    assert plaza[-1].final and plaza[-1].last_seq == len(tracklets) - 1
    assert not any(m.final for m in plaza[:-1])
    for m in plaza:
        assert all(t.end_time >= m.watermark for t in tracklets[m.last_seq + 1 :]), m
    door = [m for m in markers if m.camera_id == "door"]
    assert door and all(m.idle for m in door if not m.final) and door[-1].final


@pytest.mark.parametrize(
    "body, expect",
    [
        (lambda t: cams_yaml({"cam1": str(t / "missing.mp4")}), "cam1"),
        (lambda t: cams_yaml({"cam1": "99"}), "cam1"),
        (
            lambda t: cams_yaml(
                {"cam1": str(shared_path("data/vtest/vtest.avi"))}, "tracker:\n  name: sort9000"
            ),
            "sort9000",
        ),
        (
            lambda t: cams_yaml({"cam1": str(shared_path("data/vtest/vtest.avi"))}, "detector2: {}"),
            "detector2",
        ),
        (
            lambda t: cams_yaml(
                {"cam1": str(shared_path("data/vtest/vtest.avi"))}, "replay:\n  max_frames: soon"
            ),
            "max_frames",
        ),
    ],
)
def test_bad_input_is_one_line_naming_what_is_wrong(tmp_path, body, expect):
    cfg = write_cams(tmp_path, body(tmp_path))
    r = run_cli(
        "--cameras", str(cfg), "--until", "tracklets", "--out", str(tmp_path / "o"), "--quiet", timeout=300
    )
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and expect in last
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "cam1.txt").exists()  # nothing half-written


def test_unreadable_video_is_refused_at_start(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    cfg = write_cams(tmp_path, cams_yaml({"cam1": str(bad)}))
    r = run_cli(
        "--cameras", str(cfg), "--until", "tracklets", "--out", str(tmp_path / "o"), "--quiet", timeout=300
    )
    assert r.returncode == 2 and "cam1" in r.stderr.strip().splitlines()[-1]


def test_health_reporter_stores_each_cameras_health(detector, tmp_path):
    from pipeline.runtime.health import HealthReporter
    from storage import repository as repo
    from storage.db import open_store
    from storage.models import CameraRow

    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    vtest = shared_path("data/vtest/vtest.avi")
    cams = [
        Camera(
            "plaza",
            open_source("plaza", str(vtest), max_frames=10),
            build_tracker("bytetrack"),
            builder("plaza"),
        ),
        Camera(
            "door",
            open_source("door", "http://user:pw123@127.0.0.1:9/s.ts", live=FAST_LIVE),
            build_tracker("bytetrack"),
            builder("door"),
        ),
    ]
    group = CameraGroup(cams, detector.detect, batch=2)
    with store.session() as s:
        for c in cams:
            repo.upsert_camera(s, c.camera_id, "redacted", None)
        s.commit()
    reporter = HealthReporter(store, group, every_s=0.2)
    reporter.start()
    runner = threading.Thread(target=group.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while cams[0].stats.frames < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    group.stop()
    runner.join(30)
    reporter.stop()
    with store.session(readonly=True) as s:
        rows = {r.id: r for r in s.query(CameraRow).all()}
    assert rows["plaza"].frames == 10 and rows["plaza"].last_frame_time is not None
    assert rows["door"].connected is False and rows["door"].frames == 0 and rows["door"].last_error
    assert "pw123" not in rows["door"].last_error
    store.dispose()


@pytest.mark.parametrize(
    "source",
    [
        "x.mp4; touch {marker}",
        "$(touch {marker}).mp4",
        "`touch {marker}`.avi",
        "rtsp://cam/;touch {marker}",
    ],
)
def test_config_paths_and_urls_never_reach_a_shell(tmp_path, source):
    marker = tmp_path / "pwned"
    src = source.format(marker=marker)
    body = cams_yaml({"cam1": json.dumps(src)}) + "live: {read_timeout_s: 0.5, reconnect_initial_s: 0.2}\n"
    cfg = write_cams(tmp_path, body)
    r = (
        run_cli(
            "--cameras",
            str(cfg),
            "--until",
            "tracklets",
            "--out",
            str(tmp_path / "o"),
            "--max-frames",
            "1",
            "--quiet",
            timeout=60,
        )
        if not src.startswith("rtsp")
        else None
    )
    if r is not None:
        assert r.returncode == 2 and "cam1" in r.stderr.strip().splitlines()[-1]
    else:  # a live URL keeps retrying: open it directly and close it again
        s = open_source("cam1", src, live=FAST_LIVE)
        time.sleep(1.0)
        s.close()
    assert not marker.exists()


class FailsAfter(FrameSource):
    """A real source that raises ``error`` after ``n`` frames (a disk gone, or a bug in a source)."""

    def __init__(self, inner: FrameSource, n: int, error: BaseException) -> None:
        super().__init__(inner.camera_id, max_frames=None)
        self.inner, self.n, self.error = inner, n, error
        self._fps, self._start_time = inner.fps, inner.start_time

    def __next__(self):
        if self._yielded == self.n:
            raise self.error
        self._yielded += 1
        return next(self.inner)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    "error, fails_run",
    [(OSError("input/output error"), False), (cv2.error("decoder"), False), (TypeError("a bug"), True)],
)
def test_a_source_failure_ends_that_camera_only_and_a_bug_fails_the_run(detector, error, fails_run):
    vtest = str(shared_path("data/vtest/vtest.avi"))

    def camera(cid, source):
        return Camera(cid, source, build_tracker("bytetrack"), builder(cid))

    good = camera("good", open_source("good", vtest, max_frames=12))
    bad = camera("bad", FailsAfter(open_source("bad", vtest, max_frames=12), 3, error))
    group = CameraGroup([good, bad], detector.detect, batch=2)
    if fails_run:
        with pytest.raises(TypeError, match="a bug"):
            group.run()
        return
    stats = group.run()
    assert stats["good"].frames == 12 and stats["good"].first_error is None
    assert stats["bad"].frames == 3 and stats["bad"].first_error.startswith(type(error).__name__)
    report = stats["bad"].report()
    assert pickle.loads(pickle.dumps(report)) == report  # what the camera process sends to the parent
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.frames = 0


class HealthBug(FailsAfter):
    @property
    def health(self):
        raise TypeError("a bug in health")


@pytest.mark.parametrize("fault", ["store gone", "bug"])
def test_health_reporter_rides_out_a_store_outage_but_fails_loudly_on_a_bug(
    detector, tmp_path, fault, caplog
):
    from pipeline.runtime.health import HealthReporter
    from storage import repository as repo
    from storage.db import open_store

    folder = tmp_path / "db"
    folder.mkdir()
    store = open_store(f"sqlite:///{folder / 'h.db'}")
    vtest = str(shared_path("data/vtest/vtest.avi"))
    inner = open_source("plaza", vtest, realtime=True)  # 80 s of footage at its own pace
    source = HealthBug(inner, 10_000, StopIteration()) if fault == "bug" else inner
    cams = [Camera("plaza", source, build_tracker("bytetrack"), builder("plaza"))]
    group = CameraGroup(cams, detector.detect)
    with store.session() as s:
        repo.upsert_camera(s, "plaza", "redacted", None)
        s.commit()
    if fault == "store gone":
        shutil.rmtree(folder)
        store.dispose()  # the next connection finds no database: OperationalError, as for a server down
    reporter = HealthReporter(store, group, every_s=0.1)
    reporter.start()
    runner = threading.Thread(target=group.run, daemon=True)
    runner.start()
    runner.join(3.0)
    if fault == "bug":
        assert not runner.is_alive(), "the reporter's bug did not stop the cameras (fail fast)"
        with pytest.raises(TypeError, match="a bug in health"):
            reporter.stop()  # ... and loudly
    else:
        assert runner.is_alive() and reporter.is_alive()  # the outage costs reports, not the run
        group.stop()
        runner.join(30)
        reporter.stop()  # the final report fails too, with a warning only
        assert "camera health not stored: OperationalError" in caplog.text
    assert cams[0].stats.frames < 100
    source.close()
    store.dispose()
