"""render: a recorded camera's footage redrawn with global identities from a real (SQLite) store; a cropped
camera drawn on its stored crop, from SQL alone (also after a real run of run_pipeline.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.camera.drawing import UNASSIGNED_COLOR, draw_identities, identity_color, identity_label
from pipeline.privacy import head_region
from pipeline.tools.render import frame_boxes, main, render_camera
from storage import repository as repo
from storage.boxes import TrackBoxes
from storage.db import Store, open_store
from storage.models import CameraRow
from tests.conftest import REPO, shared_path

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RUN = "run-1"
FRAMES = 30
# (camera, track id, identity or None, box): one box per frame 0..FRAMES-1, moving right 2 px a frame.
TRACKS = [
    ("cam1", 1, 7, (100, 150, 180, 330)),
    ("cam1", 2, 3, (400, 120, 470, 300)),
    ("cam1", 3, None, (600, 300, 660, 420)),  # not matched yet: grey, "?"
    ("cam2", 1, 7, (250, 200, 320, 380)),  # identity 7 again, in another camera
]


def _box(base: tuple[int, int, int, int], frame: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = base
    return (x1 + 2 * frame, y1, x2 + 2 * frame, y2)


def _add_track(s, camera: str, track_id: int, base) -> int:
    """One FRAMES-long tracklet of run RUN with its per-frame boxes moving from ``base``; its id."""
    tid = repo.add_tracklet(
        s,
        session_key=RUN,
        camera_id=camera,
        track_id=track_id,
        chunk=0,
        first_frame=0,
        last_frame=FRAMES - 1,
        start_time=T0,
        end_time=T0.timestamp() + (FRAMES - 1) / 10,
        num_frames=FRAMES,
    )
    boxes = np.array([_box(base, f) for f in range(FRAMES)], np.float32)
    repo.add_boxes(s, tid, TrackBoxes(np.arange(FRAMES), boxes))
    return tid


def _store(tmp_path: Path, vtest: Path) -> Store:
    store = open_store(f"sqlite:///{tmp_path / 'reid.db'}")
    with store.session() as s:
        for cam in ("cam1", "cam2"):
            repo.upsert_camera(s, cam, str(vtest), T0)
        for cam, track_id, identity, base in TRACKS:
            tid = _add_track(s, cam, track_id, base)
            if identity is not None:
                repo.ensure_identity(s, identity, created_at=T0)
                repo.add_sighting(s, tid, identity, None, T0)
        s.commit()
    return store


@pytest.fixture
def vtest() -> Path:
    return shared_path("data/vtest/vtest.avi")


@pytest.fixture
def store(tmp_path: Path, vtest: Path):
    s = _store(tmp_path, vtest)
    yield s
    s.dispose()


def _decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def _left_border(image: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """Mean BGR of the drawn left border (3 px centred on x1) over the middle half of the box height."""
    x1, y1, _, y2 = (int(round(v)) for v in box)
    h = y2 - y1
    return image[y1 + h // 4 : y2 - h // 4, x1 - 1 : x1 + 2].reshape(-1, 3).astype(np.float64).mean(axis=0)


def _closest(color: np.ndarray, palette: dict) -> object:
    return min(palette, key=lambda k: np.abs(color - np.array(palette[k])).sum())


def test_render_draws_each_identity_in_its_colour(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "cam1.mp4"

    report = render_camera(store, "cam1", out, max_frames=FRAMES, progress=False)

    assert (report.frames, report.size, report.boxes, report.identities) == (
        FRAMES,
        (768, 576),
        3 * FRAMES,
        (3, 7),
    )
    assert report.session_key == RUN and report.fps == pytest.approx(10.0)
    frames = _decode(out)
    assert len(frames) == FRAMES and frames[0].shape == (576, 768, 3)
    palette = {7: identity_color(7), 3: identity_color(3), None: UNASSIGNED_COLOR}
    for f in (0, 15, FRAMES - 1):
        for cam, _, identity, base in TRACKS:
            if cam != "cam1":
                continue
            got = _left_border(frames[f], _box(base, f))
            # MPEG-4 compression shifts colours a little: close to the identity's, closest of all drawn.
            assert np.abs(got - np.array(palette[identity])).max() < 40, (f, identity, got)
            assert _closest(got, palette) == identity


def test_the_same_identity_has_the_same_colour_in_every_camera(store: Store, tmp_path: Path) -> None:
    render_camera(store, "cam2", tmp_path / "cam2.mp4", max_frames=5, progress=False)
    [frame] = _decode(tmp_path / "cam2.mp4")[2:3]
    got = _left_border(frame, _box(TRACKS[3][3], 2))
    assert np.abs(got - np.array(identity_color(7))).max() < 40


def test_frame_boxes_groups_the_stored_boxes_by_frame(store: Store) -> None:
    key, boxes = frame_boxes(store, "cam1", None)
    assert key == RUN and len(boxes.frames) == 3 * FRAMES
    b, ids = boxes.at(4)
    assert sorted(ids, key=lambda i: -1 if i is None else i) == [None, 3, 7]
    after_b, after_ids = boxes.at(FRAMES)  # past the last stored frame: nothing
    assert after_b.shape == (0, 4) and after_ids == []


def test_blur_heads_blurs_only_head_bands(store: Store, tmp_path: Path) -> None:
    plain, blurred = tmp_path / "plain.mp4", tmp_path / "blurred.mp4"
    render_camera(store, "cam1", plain, max_frames=3, progress=False)
    render_camera(store, "cam1", blurred, max_frames=3, blur_heads=True, progress=False)
    a, b = _decode(plain)[1].astype(np.float64), _decode(blurred)[1].astype(np.float64)
    x1, y1, x2, y2 = head_region(_box(TRACKS[0][3], 1), (768, 576))
    inner = (slice(y1 + 4, y2 - 2), slice(x1 + 4, x2 - 4))  # inside the band, off the drawn border
    assert b[inner].var() < 0.5 * a[inner].var()
    far = (slice(450, 570), slice(10, 200))  # no box there: the same picture in both (up to compression)
    assert np.abs(a[far] - b[far]).mean() < 2


def test_unknown_camera_is_a_one_line_error(store: Store, tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'reid.db'}"
    assert main(["--db", url, "--camera", "nope", "--out", str(tmp_path / "x.mp4"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no camera 'nope'" in err and "cam1, cam2" in err
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--session", "other"], "has no run 'other'"),
        (["--source", "/no/such/file.avi"], "does not exist"),
        (["--source", "rtsp://u:secret@cam/stream"], "cannot be replayed"),
        (["--crop", "0,0,5000,10"], "crop"),
    ],
)
def test_bad_arguments_are_one_line_errors(store: Store, tmp_path: Path, capsys, args, expected) -> None:
    url = f"sqlite:///{tmp_path / 'reid.db'}"
    code = main(["--db", url, "--camera", "cam1", "--out", str(tmp_path / "x.mp4"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err and "secret" not in err


def test_crop_renders_the_cropped_view(store: Store, tmp_path: Path) -> None:
    report = render_camera(
        store, "cam1", tmp_path / "c.mp4", crop=(0, 0, 640, 480), max_frames=2, progress=False
    )
    assert report.size == (640, 480)
    assert _decode(tmp_path / "c.mp4")[0].shape == (480, 640, 3)


def test_command_line_writes_the_video(store: Store, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'reid.db'}"
    out = tmp_path / "cli.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.tools.render",
            "--db",
            url,
            "--camera",
            "cam1",
            "--out",
            str(out),
            "--max-frames",
            "4",
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 frames 768x576" in proc.stdout and len(_decode(out)) == 4


def test_draw_identities_empty_and_labels() -> None:
    image = np.zeros((50, 60, 3), np.uint8)
    assert np.array_equal(draw_identities(image, np.zeros((0, 4)), []), image)
    assert identity_label(17) == "id 17" and identity_label(None) == "?"
    assert identity_color(7) == identity_color(7) != identity_color(8)
    with pytest.raises(ValueError, match="2 boxes but 1"):
        draw_identities(image, np.zeros((2, 4)), [1])


def test_crop_and_blur_heads_come_from_the_config(store: Store, tmp_path: Path, vtest: Path, capsys) -> None:
    cams = tmp_path / "cams.yaml"
    cams.write_text(
        f"cameras:\n  - id: cam1\n    source: {vtest}\n    crop: [0, 0, 640, 480]\nprivacy:\n  blur_heads: true\n",
        encoding="utf-8",
    )
    url = f"sqlite:///{tmp_path / 'reid.db'}"
    out = tmp_path / "cfg.mp4"
    args = ["--db", url, "--camera", "cam1", "--out", str(out), "--cameras", str(cams), "--max-frames", "2"]
    assert main([*args, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 frames 640x480" in printed and "heads blurred" in printed
    assert _decode(out)[0].shape == (480, 640, 3)
    # A camera the config does not name is a one-line error too.
    assert main(["--db", url, "--camera", "cam2", "--out", str(out), "--cameras", str(cams)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no camera 'cam2'" in err


# ----------------------------------------------------------------------------------------------------
# A cropped camera: the run stores its crop (cameras.crop, migration 0004), render needs nothing else

RIGHT = (428, 0, 768, 576)  # the right third of vtest.avi, plaza-right of configs/demo.yaml
RIGHT_BOX = (150, 200, 220, 380)  # in the crop's pixels


def _vtest_frame(vtest: Path, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(vtest))
    for _ in range(index + 1):
        ok, img = cap.read()
        assert ok, f"{vtest}: no frame {index}"
    cap.release()
    return img


@pytest.fixture
def cropped_store(tmp_path: Path, vtest: Path):
    store = open_store(f"sqlite:///{tmp_path / 'cropped.db'}")
    with store.session() as s:
        repo.upsert_camera(s, "right", str(vtest), T0, crop=RIGHT, frame_size=(340, 576))
        tid = _add_track(s, "right", 1, RIGHT_BOX)
        repo.ensure_identity(s, 7, created_at=T0)
        repo.add_sighting(s, tid, 7, None, T0)
        s.commit()
    yield store
    store.dispose()


def _region_error(rendered: np.ndarray, original: np.ndarray, x_offset: int) -> float:
    """Mean absolute difference between rows 450..570, columns 10..120 of ``rendered`` (no box there) and the
    same rectangle of ``original`` shifted right by ``x_offset`` pixels."""
    got = rendered[450:570, 10:120].astype(np.float64)
    want = original[450:570, 10 + x_offset : 120 + x_offset].astype(np.float64)
    return float(np.abs(got - want).mean())


def test_render_from_sql_alone_uses_the_stored_crop(
    cropped_store: Store, tmp_path: Path, vtest: Path, capsys
):
    url = f"sqlite:///{tmp_path / 'cropped.db'}"
    out = tmp_path / "right.mp4"
    assert (
        main(["--db", url, "--camera", "right", "--out", str(out), "--max-frames", "3", "--no-progress"]) == 0
    )
    assert "3 frames 340x576" in capsys.readouterr().out
    frames = _decode(out)
    assert frames[0].shape == (576, 340, 3)
    # The box is drawn where the stored (cropped) coordinates say, in identity 7's colour ...
    got = _left_border(frames[2], _box(RIGHT_BOX, 2))
    assert np.abs(got - np.array(identity_color(7))).max() < 40, got
    # ... over the right third of the footage, not its left third
    original = _vtest_frame(vtest, 2)
    assert _region_error(frames[2], original, RIGHT[0]) < 8.0
    assert _region_error(frames[2], original, 0) > 2 * _region_error(frames[2], original, RIGHT[0])


def test_crop_on_the_command_line_overrides_the_stored_one(cropped_store: Store, tmp_path: Path, vtest: Path):
    url = f"sqlite:///{tmp_path / 'cropped.db'}"
    out = tmp_path / "left.mp4"
    args = ["--db", url, "--camera", "right", "--out", str(out), "--max-frames", "1", "--no-progress"]
    assert main([*args, "--crop", "0,0,340,576"]) == 0
    [frame] = _decode(out)
    assert frame.shape == (576, 340, 3)
    original = _vtest_frame(vtest, 0)
    assert _region_error(frame, original, 0) < 8.0


def test_a_store_without_crops_renders_the_whole_frame(store: Store, tmp_path: Path) -> None:
    # written by upsert_camera without crop, as a store migrated from 0003 holds NULL
    report = render_camera(store, "cam1", tmp_path / "whole.mp4", max_frames=1, progress=False)
    assert report.size == (768, 576)


@pytest.mark.slow
def test_a_real_run_stores_the_crop_and_render_needs_nothing_else(tmp_path: Path, vtest: Path) -> None:
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    cams = tmp_path / "cams.yaml"
    cams.write_text(
        f"""
cameras:
  - {{id: plaza-right, source: "{vtest}", start_time: "2024-05-14T09:03:00Z", crop: [{", ".join(map(str, RIGHT))}]}}
detector: {{weights: "{det}", conf: 0.35}}
tracklets: {{min_length: 4, max_gap: 10}}
""",
        encoding="utf-8",
    )
    url = f"sqlite:///{tmp_path / 'run.db'}"
    r = subprocess.run(
        [
            sys.executable,
            "run_pipeline.py",
            "--cameras",
            str(cams),
            "--db",
            url,
            "--max-frames",
            "40",
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    store = open_store(url)
    try:
        with store.session(readonly=True) as s:
            row = s.get(CameraRow, "plaza-right")
            assert (row.crop, row.frame_width, row.frame_height) == (list(RIGHT), 340, 576)
            assert row.source == str(vtest)
            (run_key,) = repo.camera_runs(s, "plaza-right")
        _, boxes = frame_boxes(store, "plaza-right", run_key)
    finally:
        store.dispose()
    assert len(boxes.frames) > 0, "the run stored no boxes to draw"
    out = tmp_path / "plaza-right.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            "run_pipeline.py",
            "render",
            "--db",
            url,
            "--camera",
            "plaza-right",
            "--out",
            str(out),
            "--max-frames",
            "40",
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    frames = _decode(out)
    assert len(frames) == 40 and frames[0].shape == (576, 340, 3)
    # the first frame with a box: its border is in the colour of the identity the run gave it
    f = int(boxes.frames[0])
    b, ids = boxes.at(f)
    i = int(np.argmax(b[:, 3] - b[:, 1]))  # the tallest box: its border is widest to sample
    assert ids[i] is not None, "the run left a box without identity"
    got = _left_border(frames[f], tuple(b[i]))
    assert np.abs(got - np.array(identity_color(ids[i]))).max() < 60, (got, identity_color(ids[i]))
