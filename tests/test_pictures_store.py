"""Pictures and per-frame boxes of tracklets in the store, and the MOT export with global ids.

Runs on SQLite and PostgreSQL through the fixtures of ``tests/test_storage.py``.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.camera.mot_io import read_mot, write_mot
from storage import repository as repo
from storage.boxes import BOX_DTYPE, TrackBoxes, decode_boxes, encode_boxes
from storage.models import BOX_RECORD_BYTES, Base
from tests.test_storage import T0, add, assign, store, target

FIXTURES = (store, target)  # the store on SQLite and PostgreSQL, from tests/test_storage.py


def jpeg(seed: int, width: int = 128, height: int = 256) -> bytes:
    """A real JPEG of a smooth random image (quality 85)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return buf.tobytes()


def pictures(seed: int, crops: int = 3) -> list[repo.Picture]:
    """``crops`` best crops (ranks 0..) and one attention picture."""
    out = [repo.Picture("crop", r, 10 + r, 128, 256, jpeg(seed * 10 + r)) for r in range(crops)]
    return [*out, repo.Picture("attention", 0, 10, 128, 256, jpeg(seed * 10 + 9))]


def track(first: int, n: int, seed: int = 0) -> TrackBoxes:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 1000, (n, 2)).astype(np.float32)
    wh = rng.uniform(20, 200, (n, 2)).astype(np.float32)
    return TrackBoxes(np.arange(first, first + n), np.concatenate([xy, xy + wh], axis=1))


def table_counts(store) -> dict[str, int]:
    with store.session(readonly=True) as s:
        return {
            t.name: s.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
        }


# ----------------------------------------------------------------------------------------------------
# The binary layout of boxes (pure)


@pytest.mark.parametrize(
    ("first_frame", "frames"),
    [
        (0, []),  # a tracklet without boxes
        (7, [7]),  # one frame
        (100, [100, 101, 103, 180]),  # gaps where the detector missed the person
        (5_000_000_000, [5_000_000_000, 5_000_000_001]),  # beyond int32: offsets keep it small
    ],
)
def test_boxes_round_trip_bit_exact(first_frame, frames):
    boxes = np.random.default_rng(1).uniform(0, 2000, (len(frames), 4)).astype(np.float32)
    blob = encode_boxes(TrackBoxes(np.asarray(frames, np.int64), boxes), first_frame=first_frame)
    assert len(blob) == BOX_RECORD_BYTES * len(frames)
    back = decode_boxes(blob, first_frame=first_frame)
    assert back.frames.dtype == np.int64 and back.frames.tolist() == frames
    assert back.boxes.dtype == np.float32 and back.boxes.tobytes() == boxes.tobytes()


def test_box_layout_is_the_documented_one():
    blob = encode_boxes(TrackBoxes([12, 15], [[1, 2, 3, 4], [5.5, 6, 7, 8]]), first_frame=10)
    # int32 offset then x1, y1, x2, y2 float32, little-endian, 20 bytes a record
    assert blob[:20] == np.array([2], "<i4").tobytes() + np.array([1, 2, 3, 4], "<f4").tobytes()
    assert blob[20:] == np.array([5], "<i4").tobytes() + np.array([5.5, 6, 7, 8], "<f4").tobytes()
    assert np.frombuffer(blob, BOX_DTYPE)["frame"].tolist() == [2, 5]


@pytest.mark.parametrize(
    ("frames", "boxes", "error"),
    [
        ([1, 1], [[0, 0, 1, 1]] * 2, "strictly increasing"),
        ([2, 1], [[0, 0, 1, 1]] * 2, "strictly increasing"),
        ([1], [[0, 0, 1]], r"shape \(1, 4\)"),
        ([1, 2], [[0, 0, 1, 1]], r"shape \(2, 4\)"),
        ([1], [[0, 0, np.nan, 1]], "finite"),
        ([[1]], [[0, 0, 1, 1]], "frames"),
    ],
)
def test_track_boxes_rejects_malformed_columns(frames, boxes, error):
    with pytest.raises(ValueError, match=error):
        TrackBoxes(np.asarray(frames), np.asarray(boxes, np.float32))


def test_encode_and_decode_reject_what_does_not_fit():
    with pytest.raises(ValueError, match="int32 offset"):
        encode_boxes(TrackBoxes([5], [[0, 0, 1, 1]]), first_frame=6)
    with pytest.raises(ValueError, match="int32 offset"):
        encode_boxes(TrackBoxes([2**31], [[0, 0, 1, 1]]), first_frame=0)
    with pytest.raises(ValueError, match="20-byte records"):
        decode_boxes(b"\x00" * 21, first_frame=0)


# ----------------------------------------------------------------------------------------------------
# Pictures


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"kind": "thumbnail"}, "kind"),
        ({"rank": -1}, "rank"),
        ({"rank": True}, "rank"),
        ({"frame_index": -1}, "frame_index"),
        ({"width": 0}, "width"),
        ({"height": 0}, "height"),
        ({"jpeg": b""}, "jpeg"),
        ({"jpeg": b"\x89PNG\r\n"}, "jpeg"),
        ({"jpeg": "not bytes"}, "jpeg"),
    ],
)
def test_picture_rejects_bad_fields(change, error):
    fields = {"kind": "crop", "rank": 0, "frame_index": 0, "width": 1, "height": 1, "jpeg": jpeg(0)}
    with pytest.raises(ValueError, match=error):
        repo.Picture(**{**fields, **change})


def test_pictures_round_trip_byte_exact(store):
    with store.session() as s:
        a = add(s, "A", 1, 0, 10)
        b = add(s, "B", 2, 20, 30)
        u = add(s, "A", 3, 40, 50)  # never assigned
        assign(s, a, 1)
        assign(s, b, 1)
        written = {tid: pictures(tid) for tid in (a, b, u)}
        for tid, pics in written.items():
            assert repo.add_pictures(s, tid, pics) == 4
        s.commit()
    with store.session(readonly=True) as s:
        got = repo.pictures_of_tracklet(s, a)
        assert [(p.kind, p.rank) for p in got] == [("crop", 0), ("crop", 1), ("crop", 2), ("attention", 0)]
        by_key = {(p.kind, p.rank): p for p in written[a]}
        for p in got:
            w = by_key[(p.kind, p.rank)]
            assert (p.tracklet_id, p.identity_id, p.camera_id) == (a, 1, "A")
            assert (p.frame_index, p.width, p.height) == (w.frame_index, w.width, w.height)
            assert type(p.jpeg) is bytes and p.jpeg == w.jpeg
            assert cv2.imdecode(np.frombuffer(p.jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (256, 128, 3)
        assert {p.identity_id for p in repo.pictures_of_tracklet(s, u)} == {None}
        of_identity = repo.pictures_of_identity(s, 1)
        assert [p.tracklet_id for p in of_identity] == [a] * 4 + [b] * 4  # by start time
        assert [
            (p.tracklet_id, p.rank) for p in repo.pictures_of_identity(s, 1, kind="crop", max_rank=0)
        ] == [
            (a, 0),
            (b, 0),
        ]
        assert [p.kind for p in repo.pictures_of_identity(s, 1, kind="attention")] == ["attention"] * 2


def test_pictures_of_nothing(store):
    with store.session() as s:
        tid = add(s, "A", 1, 0, 1)
        assert repo.add_pictures(s, tid, []) == 0
        assert repo.pictures_of_tracklet(s, tid) == []
        assert repo.pictures_of_tracklet(s, 12345) == []
        assert repo.pictures_of_identity(s, 7) == []
        with pytest.raises(ValueError, match="kind"):
            repo.pictures_of_identity(s, 7, kind="crops")


def test_add_pictures_is_idempotent_and_checks_its_input(store):
    with store.session() as s:
        tid = add(s, "A", 1, 0, 1)
        first = pictures(1)
        assert repo.add_pictures(s, tid, first) == 4
        again = [repo.Picture(p.kind, p.rank, p.frame_index, p.width, p.height, jpeg(99)) for p in first]
        assert repo.add_pictures(s, tid, [*again, repo.Picture("crop", 3, 0, 1, 1, jpeg(3))]) == 1
        stored = {(p.kind, p.rank): p.jpeg for p in repo.pictures_of_tracklet(s, tid)}
        assert stored == {**{(p.kind, p.rank): p.jpeg for p in first}, ("crop", 3): jpeg(3)}
        with pytest.raises(LookupError, match="no tracklet"):
            repo.add_pictures(s, tid + 100, first)
        with pytest.raises(ValueError, match="repeated"):
            repo.add_pictures(s, tid, [first[0], first[0]])
        with pytest.raises(TypeError, match="Picture"):
            repo.add_pictures(s, tid, [b"\xff\xd8\xff"])


def test_a_failed_transaction_leaves_no_orphan_pictures_or_boxes(store):
    """The worker writes tracklet, embedding, pictures and boxes in one transaction: an error before the
    commit leaves nothing, in any table."""
    before = table_counts(store)
    with pytest.raises(LookupError), store.session() as s:
        tid = add(s, "A", 1, 0, 10)
        repo.add_embedding(s, tid, model="m", vector=[1.0, 0.0])
        repo.add_pictures(s, tid, pictures(1))
        repo.add_boxes(s, tid, track(0, 101))
        repo.add_sighting(s, tid, 5, None, T0)  # identity 5 does not exist: the transaction fails
    assert table_counts(store) == before
    with store.session() as s:
        tid = add(s, "A", 1, 0, 10)
        repo.add_pictures(s, tid, pictures(1))
        s.rollback()
    assert table_counts(store) == before


def test_pictures_and_boxes_go_with_their_tracklet(store):
    """The foreign keys cascade: deleting a tracklet by hand (plain SQL) deletes its pictures and boxes."""
    with store.session() as s:
        tid = add(s, "A", 1, 0, 10)
        repo.add_pictures(s, tid, pictures(1))
        repo.add_boxes(s, tid, track(0, 50))
        s.commit()
    with store.session() as s:
        s.execute(sa.text("DELETE FROM tracklets WHERE id = :id"), {"id": tid})
        s.commit()
    counts = table_counts(store)
    assert (counts["tracklet_pictures"], counts["tracklet_boxes"]) == (0, 0)


# ----------------------------------------------------------------------------------------------------
# Per-frame boxes


def test_boxes_round_trip_through_the_store(store):
    with store.session() as s:
        tid = add(s, "A", 1, 0, 10)  # frames 0..100
        empty = add(s, "A", 2, 0, 10)
        written = track(0, 101, seed=3)
        assert repo.add_boxes(s, tid, written) is True
        assert repo.add_boxes(s, tid, track(0, 5, seed=4)) is False  # a repeat keeps the first
        assert repo.add_boxes(s, empty, TrackBoxes([], [])) is True
        s.commit()
    with store.session(readonly=True) as s:
        got = repo.boxes_of_tracklet(s, tid)
        assert got.frames.tolist() == written.frames.tolist()
        assert got.boxes.tobytes() == written.boxes.tobytes()
        assert len(repo.boxes_of_tracklet(s, empty)) == 0
        assert repo.boxes_of_tracklet(s, tid + 100) is None
        raw = s.execute(
            sa.text("SELECT num_boxes, boxes FROM tracklet_boxes WHERE tracklet_id = :i"), {"i": tid}
        )
        num, blob = raw.one()
        assert (num, len(blob)) == (101, 101 * BOX_RECORD_BYTES)


@pytest.mark.parametrize(
    ("frames", "error"),
    [((-1, 3), "outside"), ((5, 101), "outside"), ((95, 101), "outside")],
)
def test_add_boxes_refuses_frames_outside_the_tracklet(store, frames, error):
    with store.session() as s:
        tid = add(s, "A", 1, 0, 10)  # frames 0..100
        lo, hi = frames
        with pytest.raises(ValueError, match=error):
            repo.add_boxes(s, tid, TrackBoxes([lo, hi], [[0, 0, 1, 1]] * 2))
        with pytest.raises(LookupError, match="no tracklet"):
            repo.add_boxes(s, tid + 1, TrackBoxes([], []))


def test_boxes_of_camera_filters_by_run_time_and_frames(store):
    with store.session() as s:
        a = add(s, "A", 1, 0, 10)  # frames 0..100
        b = add(s, "A", 2, 5, 15)  # frames 50..150, unassigned
        c = add(s, "A", 1, 0, 10, key="run2")
        other = add(s, "B", 1, 0, 10)
        assign(s, a, 4)
        for tid, first in ((a, 0), (b, 50), (c, 0), (other, 0)):
            repo.add_boxes(s, tid, track(first, 101, seed=tid))
        s.commit()
    with store.session(readonly=True) as s:
        everything = repo.boxes_of_camera(s, "A")
        assert [(x.tracklet_id, x.identity_id) for x in everything] == [(a, 4), (c, None), (b, None)]
        assert [x.tracklet_id for x in repo.boxes_of_camera(s, "A", session_key="run1")] == [a, b]
        assert [x.tracklet_id for x in repo.boxes_of_camera(s, "A", assigned_only=True)] == [a]
        assert [x.tracklet_id for x in repo.boxes_of_camera(s, "A", since=T0 + 12, until=T0 + 20)] == [b]
        cut = repo.boxes_of_camera(s, "A", session_key="run1", frames=(90, 120))
        assert [(x.tracklet_id, x.track.frames[0], x.track.frames[-1]) for x in cut] == [
            (a, 90, 100),
            (b, 90, 120),
        ]
        assert repo.boxes_of_camera(s, "A", session_key="run1", frames=(151, 200)) == []
        assert repo.boxes_of_camera(s, "C") == []
        with pytest.raises(ValueError, match="reversed"):
            repo.boxes_of_camera(s, "A", frames=(5, 4))
        with pytest.raises(ValueError, match="after"):
            repo.boxes_of_camera(s, "A", since=T0 + 1, until=T0)


# ----------------------------------------------------------------------------------------------------
# MOT export with global identities


def test_mot_rows_carry_global_identities(store, tmp_path):
    with store.session() as s:
        a1 = add(s, "A", 1, 0, 1)  # frames 0..10
        a2 = add(s, "A", 2, 0.5, 1.5)  # frames 5..15, the same person as camera B's track
        u = add(s, "A", 3, 0, 1)  # unassigned: no global id, not exported
        b = add(s, "B", 9, 0, 1)
        assign(s, a1, 7)
        assign(s, a2, 3)
        assign(s, b, 3)
        tracks = {
            a1: track(0, 3, seed=1),
            a2: TrackBoxes([5, 6], [[10, 20, 40, 100], [12, 20, 42, 101]]),
            u: track(0, 2),
        }
        tracks[b] = track(0, 2, seed=2)
        for tid, t in tracks.items():
            repo.add_boxes(s, tid, t)
        s.commit()
    with store.session(readonly=True) as s:
        rows = repo.mot_rows(s, "A")
        assert rows.shape == (5, 10) and rows.dtype == np.float64
        assert rows[:, :2].tolist() == [[1, 7], [2, 7], [3, 7], [6, 3], [7, 3]]  # 1-based frames, sorted
        assert rows[3, 2:7].tolist() == [10, 20, 30, 80, 1]  # xywh, conf 1
        assert (rows[:, 7:] == -1).all()
        assert repo.mot_rows(s, "B")[:, 1].tolist() == [3, 3]  # the same global id in both cameras
        assert repo.mot_rows(s, "C").shape == (0, 10)
    path = tmp_path / "A.txt"
    write_mot(path, rows)
    back = read_mot(path)
    assert back[:, :2].tolist() == rows[:, :2].tolist()
    np.testing.assert_allclose(back[:, 2:6], rows[:, 2:6], atol=0.006)


def test_mot_rows_one_run_per_file(store):
    with store.session() as s:
        first = add(s, "A", 1, 0, 1, key="run1")
        second = add(s, "A", 1, 100, 101, key="run2")  # the tracker counts from 1 again
        assign(s, first, 1)
        assign(s, second, 2)
        repo.add_boxes(s, first, track(0, 2))
        repo.add_boxes(s, second, track(1000, 2))
        s.commit()
    with store.session(readonly=True) as s:
        assert repo.camera_runs(s, "A") == ["run1", "run2"]
        with pytest.raises(ValueError, match="run1.*run2"):
            repo.mot_rows(s, "A")
        assert repo.mot_rows(s, "A", "run1")[:, :2].tolist() == [[1, 1], [2, 1]]
        assert repo.mot_rows(s, "A", "run2")[:, :2].tolist() == [[1001, 2], [1002, 2]]
        assert repo.mot_rows(s, "A", "run3").shape == (0, 10)
