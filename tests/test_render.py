"""render: a recorded camera's footage redrawn with global identities from a real (SQLite) store."""

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


def _store(tmp_path: Path, vtest: Path) -> Store:
    store = open_store(f"sqlite:///{tmp_path / 'reid.db'}")
    with store.session() as s:
        for cam in ("cam1", "cam2"):
            repo.upsert_camera(s, cam, str(vtest), T0)
        for cam, track_id, identity, base in TRACKS:
            tid = repo.add_tracklet(
                s,
                session_key=RUN,
                camera_id=cam,
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
