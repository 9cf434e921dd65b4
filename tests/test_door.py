"""Errors at the door, through the real command line: a bad camera, detector weights or re-ID checkpoint ends
the command in seconds with exit code 2 and one line on stderr naming the camera or key; no worker starts and
nothing reaches SQL. A live URL that is well formed but unreachable passes the door."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.runtime.door import check_at_door
from tests.conftest import REPO, shared_path

DOOR_S = 45.0  # generous on a loaded 2-core machine; a started worker would take far longer


def write_config(tmp_path: Path, source: str, extra: str = "") -> Path:
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    body = f'cameras:\n  - {{id: cam1, source: "{source}"}}\n'
    if "detector:" not in extra:
        body += f'detector: {{weights: "{det}"}}\n'
    p = tmp_path / "cams.yaml"
    p.write_text(body + extra)
    return p


def bad_inputs(tmp: Path) -> dict[str, tuple[str, str, str]]:
    """case -> (camera source, extra YAML, what the error line must name)."""
    vtest = str(shared_path("data/vtest/vtest.avi"))
    (tmp / "broken.mp4").write_text("not a video")
    (tmp / "empty").mkdir()
    (tmp / "junk.pt").write_bytes(b"\x00not a checkpoint")
    return {
        "missing file": (str(tmp / "nope.mp4"), "", "cam1"),
        "not a video": (str(tmp / "broken.mp4"), "", "cam1"),
        "empty image folder": (str(tmp / "empty") + "/", "", "cam1"),
        "URL without host": ("rtsp://admin:hunter2@/stream", "", "cam1"),
        "URL with bad port": ("rtsp://admin:hunter2@cam:99999/stream", "", "cam1"),
        "absent webcam": ("63", "", "cam1"),
        "missing detector weights": (
            vtest,
            f'detector: {{weights: "{tmp / "nope.pt"}"}}\n',
            "detector.weights",
        ),
        "bare detector weights": (vtest, "detector: {weights: absent-yolo.pt}\n", "detector.weights"),
        "not a checkpoint": (vtest, f'reid: {{checkpoint: "{tmp / "junk.pt"}"}}\n', "reid.checkpoint"),
        "missing backbone weights": (
            vtest,
            f'reid: {{backbone_weights: "{tmp / "osnet.pth"}"}}\n',
            "reid.backbone_weights",
        ),
        "not backbone weights": (vtest, f'reid: {{backbone_weights: "{vtest}"}}\n', "reid.backbone_weights"),
        "unknown tracker": (vtest, "tracker: {name: nope}\n", "tracker.name"),
        # matcher.threshold: auto needs a checkpoint that records a calibrated threshold; this older one does not
        "auto threshold, uncalibrated checkpoint": (
            vtest,
            f'reid: {{checkpoint: "{REPO / "models" / "checkpoints" / "drsta_osnet_x0_25_pku.pt"}"}}\n',
            "matcher.threshold",
        ),
        # camera centering demanded of a checkpoint that records no camera prior
        "centering without a prior": (
            vtest,
            f'reid: {{checkpoint: "{REPO / "models" / "checkpoints" / "drsta_osnet_x0_25_pku.pt"}"}}\n'
            "matcher: {threshold: 0.5, camera_centering: true}\n",
            "matcher.camera_centering",
        ),
    }


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "run_pipeline.py", *args], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    return r, time.monotonic() - t0


def assert_refused_at_door(r: subprocess.CompletedProcess, seconds: float, names: str, db: Path) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], r.stderr
    assert "hunter2" not in r.stderr + r.stdout
    assert "camera" not in r.stdout and "tracklets in SQL" not in r.stdout  # no summary, no worker output
    assert not db.exists(), "the store was created: the door came too late"
    assert seconds < DOOR_S, f"took {seconds:.1f} s"


CASES = [
    "missing file",
    "not a video",
    "empty image folder",
    "URL without host",
    "URL with bad port",
    "absent webcam",
    "missing detector weights",
    "bare detector weights",
    "not a checkpoint",
    "missing backbone weights",
    "not backbone weights",
    "unknown tracker",
    "auto threshold, uncalibrated checkpoint",
    "centering without a prior",
]


@pytest.mark.parametrize("case", CASES)
def test_full_run_refuses_bad_input_at_the_door(tmp_path, case):
    if case == "absent webcam" and Path("/dev/video63").exists():
        pytest.skip("this machine has a /dev/video63")
    source, extra, names = bad_inputs(tmp_path)[case]
    db = tmp_path / "reid.db"
    cfg = write_config(tmp_path, source, extra)
    r, seconds = run_cli("--cameras", str(cfg), "--db", f"sqlite:///{db}", "--quiet")
    assert_refused_at_door(r, seconds, names, db)


@pytest.mark.parametrize(
    "command, case",
    [
        (["--until", "tracklets", "--out", "{tmp}/o"], "not a video"),
        (["--until", "tracklets", "--out", "{tmp}/o"], "missing detector weights"),
        (["worker", "camera", "--redis", "redis://127.0.0.1:6379/0"], "missing file"),
        (["worker", "camera", "--redis", "redis://127.0.0.1:6379/0"], "URL without host"),
    ],
)
def test_other_commands_refuse_bad_input_at_the_door(tmp_path, command, case):
    source, extra, names = bad_inputs(tmp_path)[case]
    db = tmp_path / "reid.db"
    cfg = write_config(tmp_path, source, extra)
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    if args[0] == "worker":
        args = [*args[:2], "--cameras", str(cfg), *args[2:]]
    else:
        args = ["--cameras", str(cfg), *args]
    r, seconds = run_cli(*args, "--db", f"sqlite:///{db}", "--quiet")
    assert_refused_at_door(r, seconds, names, db)
    assert not (tmp_path / "o" / "cam1.txt").exists()


@pytest.mark.parametrize("role", ["reid", "matcher"])
def test_server_roles_check_the_checkpoint(tmp_path, role):
    vtest = str(shared_path("data/vtest/vtest.avi"))
    cfg = write_config(tmp_path, vtest, f'reid: {{checkpoint: "{tmp_path / "junk.pt"}"}}\n')
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    db = tmp_path / "reid.db"
    r, seconds = run_cli(
        "worker",
        role,
        "--cameras",
        str(cfg),
        "--redis",
        "redis://127.0.0.1:6379/0",
        "--db",
        f"sqlite:///{db}",
    )
    assert_refused_at_door(r, seconds, "reid.checkpoint", db)
    assert "junk.pt" in r.stderr


@pytest.mark.parametrize(
    "args, names",
    [(["--only", "cam9"], "--only"), (["--out", "{tmp}/cams.yaml"], "--out")],
)
def test_command_line_inputs_are_checked_at_the_door(tmp_path, args, names):
    cfg = write_config(tmp_path, str(shared_path("data/vtest/vtest.avi")))
    db = tmp_path / "reid.db"
    extra = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r, seconds = run_cli("--cameras", str(cfg), "--db", f"sqlite:///{db}", "--quiet", *extra)
    assert_refused_at_door(r, seconds, names, db)


@pytest.mark.parametrize(
    "source",
    [
        "rtsp://admin:pw@127.0.0.1:9/stream",  # nothing listens: unreachable, not malformed
        "http://127.0.0.1:9/live.ts",
        "rtsps://cam.invalid:8554/stream?token=abc",
    ],
)
def test_well_formed_live_urls_pass_the_door_even_when_unreachable(tmp_path, source):
    cfg = load_config(write_config(tmp_path, source))
    check_at_door(cfg, cameras=True)  # returns: the camera will keep reconnecting as it always does


def test_good_inputs_pass_the_door(tmp_path):
    vtest = str(shared_path("data/vtest/vtest.avi"))
    mot = shared_path("data/mot17-mini")
    folders = sorted(p for p in mot.rglob("img1") if p.is_dir())
    if not folders:
        pytest.skip(f"no img1/ image folder under {mot}")
    cfg_path = tmp_path / "cams.yaml"
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    cfg_path.write_text(
        f'cameras:\n  - {{id: a, source: "{vtest}"}}\n  - {{id: b, source: "{folders[0]}/"}}\n'
        f'detector: {{weights: "{det}"}}\n'
    )
    check_at_door(load_config(cfg_path), cameras=True, reid=True)  # the default checkpoint is good


def test_a_crop_outside_the_frame_is_refused_at_the_door(tmp_path):
    vtest = shared_path("data/vtest/vtest.avi")  # 768x576
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(
        f'cameras:\n  - {{id: zone, source: "{vtest}", crop: [400, 0, 900, 576]}}\n'
        f'detector: {{weights: "{det}"}}\n'
    )
    db = tmp_path / "reid.db"
    r, seconds = run_cli("--cameras", str(cfg), "--db", f"sqlite:///{db}", "--quiet")
    assert_refused_at_door(r, seconds, "zone", db)
    assert "crop" in r.stderr
