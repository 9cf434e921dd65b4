"""models.adapt: the pairs it believes in, and that adaptation never pulls co-occurring tracks together.

The "small real run" is PKU-Reid images arranged as the tracks of one camera with known co-occurrence (plus
a second camera and a returning person, whose pairs are unknown and must stay out of the loss), a tiny
video with pasted PKU crops read back through ``read_run``, and a real ``run_pipeline.py`` run on 60 frames
of vtest.avi whose SQLite store is read back through ``read_store`` (``--db``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch

from models.adapt import (
    AdaptConfig,
    RunTracklet,
    adapt_head,
    backbone_maps,
    build_pairs,
    co_occurring_tracks,
    known_pair_loss,
    main,
    read_run,
    read_store,
    sources_of,
    view_embeddings,
    write_adapted,
)
from models.checkpoint import DEFAULT_CHECKPOINT, load_drsta, read_checkpoint
from models.datasets import read_image_bgr
from tests.conftest import REPO, pg_unreachable, shared_path

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

# (track id, camera, pku id, pku camera, [(chunk, first_frame, last_frame, images 1-8)])
LAYOUT = [
    (1, "door", "001", "01", [(0, 0, 9, (1, 2, 3, 4)), (1, 30, 39, (5, 6, 7, 8))]),
    (2, "door", "003", "01", [(0, 5, 14, (1, 2, 3, 4)), (1, 40, 49, (5, 6, 7, 8))]),  # with 1 (5-9), 3
    (3, "door", "011", "01", [(0, 12, 20, (1, 2, 3, 4, 5, 6, 7, 8))]),  # with 2 (12-14)
    (4, "door", "013", "01", [(0, 100, 110, (1, 2, 3, 4, 5, 6, 7, 8))]),  # alone
    (6, "door", "001", "02", [(0, 60, 70, (1, 2, 3, 4, 5, 6, 7, 8))]),  # person of track 1 again: unknown
    (5, "hall", "014", "01", [(0, 0, 9, (1, 2, 3, 4, 5, 6, 7, 8))]),  # same time, other camera: unknown
]
CO_OCCURRING = {(1, 2), (2, 3)}


def layout_tracklets(crop_of) -> list[RunTracklet]:
    return [
        RunTracklet("run", cam, tid, chunk, f0, f1, tuple(crop_of(pid, pcam, i) for i in imgs))
        for tid, cam, pid, pcam, chunks in LAYOUT
        for chunk, f0, f1, imgs in chunks
    ]


def dummy_crop(pid, pcam, i) -> np.ndarray:
    return np.full((8, 4, 3), i, np.uint8)


def track_pairs(pairs, which: np.ndarray) -> set[tuple[int, int]]:
    tid = [pairs.tracks[t][2] for t in pairs.view_track]
    return {tuple(sorted((tid[i], tid[j]))) for i, j in which}


def test_pairs_are_only_what_is_known():
    pairs = build_pairs(layout_tracklets(dummy_crop))
    tid = [pairs.tracks[t][2] for t in pairs.view_track]
    assert all(tid[i] == tid[j] for i, j in pairs.positive)
    assert track_pairs(pairs, pairs.positive) == {(t, t) for t in (1, 2, 3, 4, 5, 6)}
    # negatives: exactly the co-occurring tracks of one camera; never a track with itself
    assert track_pairs(pairs, pairs.negative) == CO_OCCURRING
    assert not track_pairs(pairs, pairs.positive) & track_pairs(pairs, pairs.negative)
    # 2 chunks x 2 halves = 4 views of track 1 -> 6 positive pairs; 1 chunk -> 2 views -> 1 pair
    assert sum(tid[i] == 1 for i, _ in pairs.positive) == 6
    assert sum(tid[i] == 3 for i, _ in pairs.positive) == 1
    # 4 views of track 1 x 4 of track 2 + 4 of track 2 x 2 of track 3
    assert len(pairs.negative) == 16 + 8


@pytest.mark.parametrize(
    "spans, expected",
    [
        ([], set()),
        ([(1, 0, 5)], set()),  # one track
        ([(1, 0, 5), (2, 5, 9)], {(1, 2)}),  # touch at frame 5: both visible in it
        ([(1, 0, 5), (2, 6, 9)], set()),  # one after the other: unknown, not different
        ([(1, 0, 5), (1, 3, 9)], set()),  # chunks of one track (a tracker id is never two people at once)
    ],
)
def test_co_occurrence(spans, expected):
    ts = [RunTracklet("s", "c", t, i, f0, f1, (dummy_crop(0, 0, 0),)) for i, (t, f0, f1) in enumerate(spans)]
    got = {tuple(sorted((a[2], b[2]))) for a, b in co_occurring_tracks(ts)}
    assert got == expected


def test_sessions_do_not_mix():
    """Track ids restart per run: track 2 of another run at the same frames is not a known negative."""
    a = RunTracklet("run-a", "door", 1, 0, 0, 9, (dummy_crop(0, 0, 0),))
    b = RunTracklet("run-b", "door", 2, 0, 0, 9, (dummy_crop(0, 0, 0),))
    assert co_occurring_tracks([a, b]) == set()


def test_empty_run_has_no_pairs():
    pairs = build_pairs([])
    assert pairs.positive.shape == (0, 2) and pairs.negative.shape == (0, 2) and not pairs.tracks


def test_known_pair_loss_is_zero_without_anchors():
    emb = torch.eye(4)  # every two views at cosine 0
    none = torch.zeros((0, 2), dtype=torch.long)
    assert float(known_pair_loss(emb, torch.tensor([[0, 1]]), none, 0.05)) == 0.0
    # anchors 0 (positive 1, negative 2) and 1 (positive 0, no negative): only 0 counts, ranking 1 vs 2
    loss = float(known_pair_loss(emb, torch.tensor([[0, 1]]), torch.tensor([[0, 2]]), 0.05))
    assert loss == pytest.approx(np.log(2))


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """Adapt the default head on the PKU layout; return (tracklets, input copy, output, summary)."""
    root = shared_path("data/pku-reid")
    shared_path("assets/reid/openvino_person_reid")
    tracklets = layout_tracklets(lambda pid, pcam, i: read_image_bgr(str(root / pid / f"{pcam}_{i}.png")))
    tmp = tmp_path_factory.mktemp("adapt")
    src = tmp / "input.pt"
    shutil.copyfile(DEFAULT_CHECKPOINT, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    model, summary = adapt_head(load_drsta(src), tracklets, AdaptConfig(steps=60))
    out = write_adapted(model, src, tmp / "adapted.pt", summary, run="pku layout")
    return tracklets, src, digest, out, summary


def test_adaptation_never_pulls_co_occurring_tracks_together(adapted):
    tracklets, src, _, out, _ = adapted
    pairs = build_pairs(tracklets)
    crops = [c for t in tracklets for c in t.crops]
    before_model, after_model = load_drsta(src), load_drsta(out)  # what the files hold (float16 head)
    before = view_embeddings(before_model, backbone_maps(before_model, crops), pairs)
    after = view_embeddings(after_model, backbone_maps(after_model, crops), pairs)

    def cos(e, p):
        return (e[p[:, 0]] * e[p[:, 1]]).sum(1)

    tol = 2e-3  # float16 storage of the head
    neg_before, neg_after = cos(before, pairs.negative), cos(after, pairs.negative)
    pos_before, pos_after = cos(before, pairs.positive), cos(after, pairs.positive)
    assert (neg_after <= neg_before + tol).all(), (neg_after - neg_before).max()
    assert (pos_after >= pos_before - tol).all(), (pos_before - pos_after).max()
    assert neg_after.mean() < neg_before.mean() - 0.01  # it did push the known negatives apart


def test_output_is_a_new_checkpoint_and_the_input_is_untouched(adapted):
    _, src, digest, out, summary = adapted
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    old, new = read_checkpoint(src), read_checkpoint(out)
    assert any(not torch.equal(old["head"][k], new["head"][k]) for k in old["head"])
    assert new["meta"]["threshold"] == old["meta"]["threshold"]
    assert "not recalibrated" in new["meta"]["threshold_source"]
    assert new["meta"].get("centering") == old["meta"].get("centering")  # the camera prior goes along
    assert json.loads(new["meta"]["adaptation"])["negative_pairs"] == summary["negative_pairs"] == 24
    load_drsta(out)
    with pytest.raises(ValueError, match="input checkpoint"):
        write_adapted(load_drsta(src), src, src, summary, run="x")


def test_nothing_to_adapt_on_without_co_occurrence():
    lone = [t for t in layout_tracklets(dummy_crop) if t.track_id in (4, 5)]
    with pytest.raises(ValueError, match="nothing to adapt on"):
        adapt_head(torch.nn.Identity(), lone, AdaptConfig(steps=1))  # refuses before touching the model


@pytest.mark.parametrize("kind", ["video", "image folder"])
def test_read_run_recrops_the_footage(tmp_path, kind):
    """Two tracks of a 12-frame clip, at the same time: read back from MOT rows + tracklets.jsonl."""
    root = shared_path("data/pku-reid")
    person = {1: read_image_bgr(str(root / "001/01_1.png")), 2: read_image_bgr(str(root / "003/01_1.png"))}
    h, w = person[1].shape[:2]
    video = tmp_path / ("cam.avi" if kind == "video" else "frames")
    if kind == "video":
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    else:
        video.mkdir()
    rows = []
    for f in range(12):
        frame = np.full((240, 320, 3), 90, np.uint8)
        for tid, x in ((1, 10 + 5 * f), (2, 200)):
            if tid == 2 and f < 4:
                continue  # track 2 appears at frame 4
            frame[50 : 50 + h, x : x + w] = person[tid]
            rows.append(f"{f + 1},{tid},{x},50,{w},{h},0.9,-1,-1,-1")
        if f >= 8:  # a third track on top of track 2: neither box gives a crop (it would show two people)
            rows.append(f"{f + 1},3,202,52,{w},{h},0.9,-1,-1,-1")
        if kind == "video":
            writer.write(frame)
        else:
            cv2.imwrite(str(video / f"{f + 1:06d}.png"), frame)
    if kind == "video":
        writer.release()
    out = tmp_path / "out"
    out.mkdir()
    (out / "cam.txt").write_text("\n".join(rows) + "\n")
    chunks = [
        {"camera": "cam", "track_id": 1, "chunk": 0, "first_frame": 0, "last_frame": 11},
        {"camera": "cam", "track_id": 2, "chunk": 0, "first_frame": 4, "last_frame": 11},
        {"camera": "cam", "track_id": 3, "chunk": 0, "first_frame": 8, "last_frame": 11},
    ]
    (out / "cam_tracklets.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chunks))
    # a relative source is relative to the cams file's folder, as the pipeline reads it
    source = video if kind == "video" else video.name
    (tmp_path / "cams.yaml").write_text(f"cameras:\n  - {{id: cam, source: {source}}}\n")

    ts = read_run(out, sources_of(tmp_path / "cams.yaml"), max_overlap=0.5, max_crops=5)
    # track 2: frames 4-7 only (8-11 covered by track 3); track 3: nothing left, so no tracklet
    assert [(t.track_id, len(t.crops)) for t in ts] == [(1, 5), (2, 4)]
    assert all(c.shape == (h, w, 3) for t in ts for c in t.crops)
    # the crop is the pasted person (MJPG is lossy; PNG exact): closer to its own picture than to the other one
    err = lambda a, b: np.abs(a.astype(float) - b.astype(float)).mean()  # noqa: E731
    assert err(ts[0].crops[0], person[1]) < err(ts[0].crops[0], person[2])
    if kind == "image folder":
        assert np.array_equal(ts[1].crops[0], person[2])
    assert len(co_occurring_tracks(ts)) == 1
    unfiltered = read_run(out, sources_of(tmp_path / "cams.yaml"), max_overlap=1.0, max_crops=5)
    assert [(t.track_id, len(t.crops)) for t in unfiltered] == [(1, 5), (2, 5), (3, 4)]
    with pytest.raises(KeyError, match="no footage source"):
        read_run(out, {}, max_overlap=0.5, max_crops=5)


# --- --db: a finished run's SQL store (a real run_pipeline.py run on real footage) -------------------------

STORE_FRAMES = 60


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    """run_pipeline.py on the first 60 frames of vtest.avi as two cameras (the same footage twice: the same
    people at the same time in two cameras, whose pairs must stay unknown), tracks cut into 20-frame chunks;
    SQLite store + --out folder. Returns (db url, out folder, cams.yaml)."""
    plaza = shared_path("data/vtest/vtest.avi")
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    tmp = tmp_path_factory.mktemp("store_run")
    cams = tmp / "cams.yaml"
    cams.write_text(
        f"""
cameras:
  - {{id: plaza, source: "{plaza}", start_time: "2024-05-14T09:00:00Z"}}
  - {{id: twin, source: "{plaza}", start_time: "2024-05-14T09:00:00Z"}}
detector: {{weights: "{det}", imgsz: 640}}
tracklets: {{max_length: 20}}
"""
    )
    db = f"sqlite:///{tmp / 'run.db'}"
    out = tmp / "out"
    r = subprocess.run(
        [sys.executable, "run_pipeline.py", "--cameras", str(cams), "--db", db, "--out", str(out)]
        + ["--max-frames", str(STORE_FRAMES), "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return db, out, cams


def _store_rows(db: str) -> list[tuple]:
    """(id, camera, session, track, chunk, first, last, crop pictures) of every tracklet, read with sqlite3."""
    con = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return con.execute(
            "SELECT t.id, t.camera_id, t.session_key, t.track_id, t.chunk, t.first_frame, t.last_frame, "
            "(SELECT count(*) FROM tracklet_pictures p WHERE p.tracklet_id = t.id AND p.kind = 'crop') "
            "FROM tracklets t"
        ).fetchall()
    finally:
        con.close()


def test_read_store_gives_each_stored_tracklet_with_its_crops(store_run):
    db, _, _ = store_run
    rows = _store_rows(db)
    ts = read_store(db)
    with_pictures = {(c, s, t, k): (f0, f1, n) for _, c, s, t, k, f0, f1, n in rows if n}
    assert len(with_pictures) >= 10 and {c for c, *_ in with_pictures} == {"plaza", "twin"}
    got = {
        (t.camera, t.session, t.track_id, t.chunk): (t.first_frame, t.last_frame, len(t.crops)) for t in ts
    }
    assert got == with_pictures
    assert all(1 <= len(t.crops) <= 3 for t in ts)  # reid.picture_crops, default 3
    assert all(c.ndim == 3 and c.shape[2] == 3 and c.dtype == np.uint8 for t in ts for c in t.crops)
    assert any(t.chunk > 0 for t in ts)  # 20-frame chunks: some track has several
    assert {t.camera for t in read_store(db, cameras=["twin"])} == {"twin"}
    with pytest.raises(KeyError, match="not in the store"):
        read_store(db, cameras=["nowhere"])


def test_store_pairs_are_only_what_is_known(store_run):
    """Positives: views of one (camera, run, track); negatives: exactly the tracks of one camera and run whose
    stored spans overlap (derived here from SQL directly); the twin camera's tracks (the same people at the
    same time) are never paired with plaza's."""
    db, out, cams = store_run
    ts = read_store(db)
    pairs = build_pairs(ts)
    key = [pairs.tracks[v] for v in pairs.view_track]
    assert len(pairs.positive) and len(pairs.negative)
    assert all(key[i] == key[j] for i, j in pairs.positive)
    spans = defaultdict(list)
    for _, c, s, t, _, f0, f1, n in _store_rows(db):
        if n:
            spans[(s, c, t)].append((f0, f1))
    expected = {
        (a, b)
        for a in spans
        for b in spans
        if a < b
        and a[:2] == b[:2]
        and any(p0 <= q1 and q0 <= p1 for p0, p1 in spans[a] for q0, q1 in spans[b])
    }
    got = {tuple(sorted((key[i], key[j]))) for i, j in pairs.negative}
    assert got == expected and len(expected) >= 3
    assert all(a[1] == b[1] for a, b in got)  # never across cameras
    # the footage input of the same run sees the same tracklets and the same co-occurring tracks
    from_run = read_run(out, sources_of(cams), max_overlap=0.5, max_crops=3)
    as_keys = lambda tl: {tuple(sorted(((a[1], a[2]), (b[1], b[2])))) for a, b in co_occurring_tracks(tl)}  # noqa: E731
    assert as_keys(from_run) == as_keys(ts)


def test_adapting_on_the_store_never_pulls_co_occurring_tracks_together(store_run, tmp_path):
    db, _, _ = store_run
    ts = read_store(db)
    src = tmp_path / "input.pt"
    shutil.copyfile(DEFAULT_CHECKPOINT, src)
    assert main(["--db", db, "--checkpoint", str(src), "--out", str(tmp_path / "a.pt"), "--steps", "60"]) == 0
    meta = read_checkpoint(tmp_path / "a.pt")["meta"]
    assert json.loads(meta["adaptation"])["input"] == "db" and db in meta["dataset"]
    pairs = build_pairs(ts)
    crops = [c for t in ts for c in t.crops]
    before_model, after_model = load_drsta(src), load_drsta(tmp_path / "a.pt")
    before = view_embeddings(before_model, backbone_maps(before_model, crops), pairs)
    after = view_embeddings(after_model, backbone_maps(after_model, crops), pairs)

    def cos(e, p):
        return (e[p[:, 0]] * e[p[:, 1]]).sum(1)

    tol = 2e-3  # float16 storage of the head
    assert (cos(after, pairs.negative) <= cos(before, pairs.negative) + tol).all()
    assert cos(after, pairs.negative).mean() < cos(before, pairs.negative).mean() - 0.01
    # the guard on positives is a penalty, not a constraint: here (1 to 2 crops a view) the worst chunk pair
    # lost 0.0026 at 60 steps; none may lose more than 0.01, and on average they do not lose
    assert (cos(after, pairs.positive) >= cos(before, pairs.positive) - 0.01).all()
    assert cos(after, pairs.positive).mean() >= cos(before, pairs.positive).mean() - tol


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "exactly one input"),
        (["--db", "DB", "--run", "x", "--cams", "c.yaml"], "exactly one input"),
        (["--db", "DB", "--cams", "c.yaml"], "--cams goes with --run"),
        (["--run", "x"], "--run needs --cams"),
        (["--run", "x", "--cams", "c.yaml", "--schema", "s"], "--schema goes with --db"),
        (["--db", "sqlite:///MISSING.db"], "MISSING.db: database not found"),
        (["--db", "run.db"], "not an SQLAlchemy URL"),
        (["--db", "DB", "--cameras", "nowhere"], "camera 'nowhere': not in the store"),
    ],
)
def test_cli_input_errors_are_one_line(store_run, tmp_path, capsys, args, message):
    db, _, _ = store_run
    args = [a.replace("DB", db).replace("MISSING", str(tmp_path / "missing")) for a in args]
    assert main([*args, "--out", str(tmp_path / "a.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message.replace("MISSING", "missing") in err
    assert not (tmp_path / "a.pt").exists()


def test_read_store_from_postgresql_gives_what_sqlite_gives(store_run):
    """The same stored run copied row for row into a fresh PostgreSQL schema reads back identically."""
    if reason := pg_unreachable():
        pytest.skip(reason)
    import sqlalchemy as sa

    from storage.db import open_store
    from storage.models import CameraRow, TrackletPictureRow, TrackletRow

    db, _, _ = store_run
    schema = f"adapt_{uuid.uuid4().hex[:10]}"
    pg = open_store(PG_URL, schema=schema)  # creates the schema and the tables
    lite = sa.create_engine(db)
    try:
        with lite.connect() as src, pg.engine.begin() as dst:
            for row in (CameraRow, TrackletRow, TrackletPictureRow):
                table = row.__table__
                rows = [dict(r._mapping) for r in src.execute(sa.select(table))]
                dst.execute(sa.insert(table), rows)
        got = read_store(PG_URL, schema=schema)
    finally:
        lite.dispose()
        with pg.engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        pg.dispose()
    want = read_store(db)
    key = lambda t: (t.camera, t.session, t.track_id, t.chunk)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want)) and len(want) >= 10
    by_key = {key(t): t for t in got}
    for t in want:
        g = by_key[key(t)]
        assert (g.first_frame, g.last_frame) == (t.first_frame, t.last_frame)
        assert len(g.crops) == len(t.crops) and all(
            np.array_equal(a, b) for a, b in zip(g.crops, t.crops, strict=True)
        )
    assert build_pairs(got).negative.shape == build_pairs(want).negative.shape
