"""TrackletBuilder: closing rules, chunking, quality filters, bounded evenly spread crops, ROI."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.camera.tracklets import REJECT_REASONS, TrackletBuilder, covered_fraction
from pipeline.config import ConfigError, TrackletConfig
from pipeline.transport.messages import Detections, Frame, Tracks

CAM = "cam0"
H, W = 480, 640
GOOD = (100.0, 100.0, 160.0, 260.0)  # 60 x 160, well inside the 640 x 480 frame
IMAGE = np.zeros((H, W, 3), np.uint8)
EMPTY = (Detections.empty(), Tracks.empty())


def make_builder(*, roi=None, **settings) -> TrackletBuilder:
    """A builder for ``CAM`` with the schema's defaults but ``settings`` (``tracklets:`` keys, validated).
    The synthetic scenes here put several people on the same box, so the occlusion filter is off unless a test
    sets ``max_overlap`` (it has tests of its own)."""
    settings.setdefault("max_overlap", 1.0)
    return TrackletBuilder.from_config(CAM, TrackletConfig(**settings), roi=roi)


def frame(i: int, image: np.ndarray = IMAGE) -> Frame:
    return Frame(CAM, i, 1_700_000_000.0 + i / 10.0, image)


def observe(people: list[tuple[int, tuple[float, float, float, float], float, int | None]]):
    """Detections and Tracks for ``(track_id, detected box, score, det_index)``; det_index None = own row."""
    if not people:
        return EMPTY
    boxes = np.array([p[1] for p in people], np.float32)
    scores = np.array([p[2] for p in people], np.float32)
    dets = Detections(boxes, scores, np.zeros(len(people), np.int64))
    det_idx = [i if p[3] is None else p[3] for i, p in enumerate(people)]
    tracks = Tracks(np.array([p[0] for p in people]), boxes, scores, np.array(det_idx))
    return dets, tracks


def present(*track_ids: int, box=GOOD, score: float = 0.9):
    return observe([(t, box, score, None) for t in track_ids])


def run(builder: TrackletBuilder, frames: dict[int, tuple[Detections, Tracks]], n: int):
    """Feed frames 0..n-1 (absent ones empty); return [(frame index, tracklets closed there)] for non-empty.

    Also checks that ``last_close_reasons`` always describes exactly the tracklets of the latest call.
    """
    out = []
    for i in range(n):
        closed = builder.update(frame(i), *frames.get(i, EMPTY))
        assert set(builder.last_close_reasons) == {t.key for t in closed}
        if closed:
            out.append((i, closed))
    return out


def run_from(builder: TrackletBuilder, start: int, stop: int):
    """Feed empty frames start..stop-1; return the non-empty closings as :func:`run` does."""
    return [(i, c) for i in range(start, stop) if (c := builder.update(frame(i), *EMPTY))]


@pytest.mark.parametrize("n_frames", [0, 1, 50])
def test_frames_without_tracks_give_nothing(n_frames):
    b = make_builder()
    assert run(b, {}, n_frames) == []
    assert b.flush() == []
    assert b.stats["opened"] == 0 and b.stats["closed"] == 0 and b.buffered_crops == 0


@pytest.mark.parametrize("max_gap", [0, 3, 30])
def test_closes_only_after_more_than_max_gap_missing_frames(max_gap):
    b = make_builder(max_gap=max_gap)
    frames = {i: present(5) for i in range(10)}
    closed = run(b, frames, 9 + max_gap + 1)
    assert closed == []
    closed = b.update(frame(10 + max_gap), *EMPTY)  # the (max_gap + 1)-th missing frame
    assert b.last_close_reasons == {(CAM, 5, 0): "gap"}
    closed = [(10 + max_gap, closed)] + run_from(b, 11 + max_gap, 15 + max_gap)
    assert [i for i, _ in closed] == [10 + max_gap]
    (t,) = closed[0][1]
    assert (t.track_id, t.chunk, t.first_frame, t.last_frame, t.num_frames) == (5, 0, 0, 9, 10)
    assert b.flush() == []


@pytest.mark.parametrize("max_gap", [0, 3, 30])
def test_reappearing_within_max_gap_continues_the_same_piece(max_gap):
    b = make_builder(max_gap=max_gap)
    back = 10 + max_gap  # exactly max_gap frames missing (10 .. 9 + max_gap)
    frames = {i: present(5) for i in [*range(10), back]}
    assert run(b, frames, back + 1) == []
    (t,) = b.flush()
    assert (t.chunk, t.first_frame, t.last_frame, t.num_frames) == (0, 0, back, 11)
    assert b.last_close_reasons == {(CAM, 5, 0): "flush"}


def test_frame_jump_beyond_max_gap_closes_and_reopens_as_next_chunk():
    b = make_builder(max_gap=5)
    for i in range(6):
        assert b.update(frame(i), *present(1)) == []
    (old,) = b.update(frame(12), *present(1))  # frames 6..11 missing: 6 > max_gap
    assert (old.chunk, old.last_frame) == (0, 5) and b.last_close_reasons == {(CAM, 1, 0): "gap"}
    for i in range(13, 16):
        b.update(frame(i), *present(1))
    (new,) = b.flush()
    assert (new.chunk, new.first_frame, new.last_frame, new.num_frames) == (1, 12, 15, 4)


@pytest.mark.parametrize(
    "max_length, n_frames, expected",  # expected: (chunk, first, last) of emitted tracklets, min_length 4
    [
        (10, 25, [(0, 0, 9), (1, 10, 19), (2, 20, 24)]),
        (10, 20, [(0, 0, 9), (1, 10, 19)]),
        (10, 22, [(0, 0, 9), (1, 10, 19)]),  # the 2-frame remainder is dropped as too short
        (5, 5, [(0, 0, 4)]),
        (10, 0, []),
    ],
)
def test_max_length_chunks_are_consecutive_and_continuous(max_length, n_frames, expected):
    b = make_builder(max_length=max_length)
    closed = run(b, {i: present(3) for i in range(n_frames)}, n_frames)
    tracklets = [t for _, ts in closed for t in ts]
    assert [i for i, _ in closed] == [c * max_length + max_length - 1 for c in range(n_frames // max_length)]
    assert all(len(ts) == 1 for _, ts in closed)
    tracklets += b.flush()
    assert [(t.chunk, t.first_frame, t.last_frame) for t in tracklets] == expected
    assert all(t.num_frames == t.last_frame - t.first_frame + 1 <= max_length for t in tracklets)
    n_chunks = -(-n_frames // max_length)
    assert b.stats["opened"] == b.stats["closed"] == n_chunks
    assert b.stats["dropped_short"] == n_chunks - len(expected)


def test_flush_closes_everything_sorted_by_track_id():
    b = make_builder()
    run(b, {i: present(7, 3, 5) for i in range(6)}, 6)
    out = b.flush()
    assert [t.track_id for t in out] == [3, 5, 7]
    assert b.last_close_reasons == {(CAM, 3, 0): "flush", (CAM, 5, 0): "flush", (CAM, 7, 0): "flush"}
    assert b.flush() == [] and b.last_close_reasons == {}
    assert b.stats["closed_by"] == {"gap": 0, "max_length": 0, "flush": 3}


def test_simultaneous_gap_closes_come_out_sorted_by_track_id():
    b = make_builder(max_gap=2)
    closed = run(b, {i: present(9, 2, 5) for i in range(5)}, 10)
    assert [i for i, _ in closed] == [7]
    assert [t.track_id for t in closed[0][1]] == [2, 5, 9]


@pytest.mark.parametrize("n_frames, kept", [(1, False), (3, False), (4, True), (10, True)])
def test_min_length_drops_short_tracklets(n_frames, kept):
    b = make_builder(min_length=4)
    run(b, {i: present(1) for i in range(n_frames)}, n_frames)
    out = b.flush()
    assert len(out) == int(kept)
    assert b.stats["dropped_short"] == int(not kept)
    assert b.stats["emitted"] == int(kept)


@pytest.mark.parametrize(
    "reason, box, score, det_index",
    [
        (None, GOOD, 0.9, None),
        ("unmatched", GOOD, 0.9, -1),
        ("unmatched", GOOD, 0.9, 7),  # out of range of the frame's detections
        ("low_conf", GOOD, 0.1, None),
        ("small", (100.0, 100.0, 160.0, 130.0), 0.9, None),  # 30 px high
        ("small", (100.0, 100.0, 110.0, 260.0), 0.9, None),  # 10 px wide
        ("border", (0.0, 100.0, 60.0, 260.0), 0.9, None),  # touches the left edge
        ("border", (100.0, 320.0, 160.0, 479.0), 0.9, None),  # within 2 px of the bottom edge
        ("border", (100.0, -5.0, 160.0, 200.0), 0.9, None),  # overhangs the top edge
        ("roi", (400.0, 100.0, 460.0, 260.0), 0.9, None),  # feet at x=430, outside the ROI
    ],
)
def test_rejected_frames_count_as_seen_but_give_no_crop(reason, box, score, det_index):
    roi = [(0.0, 0.0), (320.0, 0.0), (320.0, 480.0), (0.0, 480.0)]
    b = make_builder(roi=roi, max_gap=0)
    for i in range(5):
        b.update(frame(i), *present(1))
    for i in range(5, 10):
        b.update(frame(i), *observe([(1, box, score, det_index)]))
    (t,) = b.flush()
    assert (t.first_frame, t.last_frame, t.num_frames) == (0, 9, 10)
    expected_frames = list(range(10)) if reason is None else list(range(5))
    assert t.frame_indices.tolist() == expected_frames
    rejected = b.stats["crops_rejected"]
    assert rejected == {r: (5 if r == reason else 0) for r in REJECT_REASONS}


def test_track_of_rejected_frames_only_is_dropped():
    b = make_builder()
    run(b, {i: observe([(1, GOOD, 0.9, -1)]) for i in range(20)}, 20)
    assert b.flush() == []
    assert b.stats["dropped_short"] == 1 and b.stats["crops_rejected"]["unmatched"] == 20


def test_roi_uses_the_feet_point_not_the_box_centre():
    roi = [(0.0, 200.0), (640.0, 200.0), (640.0, 480.0), (0.0, 480.0)]  # lower part of the frame
    b = make_builder(roi=roi)
    run(b, {i: present(1, box=(100.0, 20.0, 160.0, 260.0)) for i in range(6)}, 6)  # centre y=140, feet y=260
    (t,) = b.flush()
    assert len(t) == 6


def test_crop_is_the_detected_box_resized_not_the_tracker_box():
    image = np.zeros((H, W, 3), np.uint8)
    image[100:260, 100:160] = (10, 200, 30)  # the detected person
    image[300:460, 400:460] = 255  # where the tracker (wrongly) thinks the person is
    dets = Detections(np.array([GOOD], np.float32), np.array([0.9], np.float32), np.zeros(1, np.int64))
    tracks = Tracks(np.array([4]), np.array([[400.0, 300.0, 460.0, 460.0]]), np.array([0.8]), np.array([0]))
    b = make_builder(crop_height=64, crop_width=32)
    for i in range(4):
        b.update(frame(i, image), dets, tracks)
    (t,) = b.flush()
    assert t.crops.shape == (4, 64, 32, 3) and t.crops.dtype == np.uint8
    assert (t.crops == np.array([10, 200, 30], np.uint8)).all()
    assert not np.shares_memory(t.crops, image)
    np.testing.assert_array_equal(t.boxes, np.array([GOOD] * 4, np.float32))
    np.testing.assert_allclose(t.scores, 0.9, rtol=1e-6)
    np.testing.assert_allclose(t.timestamps, [frame(i).timestamp for i in range(4)])


def test_default_crop_size_and_boxes_on_the_frame_edge():
    """With ``border_margin: 0`` a box touching the frame edges is kept; one overhanging them is "cut"."""
    b = make_builder(border_margin=0)
    run(b, {i: present(1, box=(0.0, 0.0, 60.0, 200.0)) for i in range(4)}, 4)
    (t,) = b.flush()
    assert t.crops.shape == (4, 256, 128, 3)
    np.testing.assert_array_equal(t.boxes[0], [0.0, 0.0, 60.0, 200.0])
    b.update(frame(4), *present(2, box=(-20.0, -10.0, 60.0, 200.0)))
    assert b.stats["crops_rejected"]["border"] == 1


@pytest.mark.parametrize("max_crops", [32, 7, 1])
def test_memory_bound_and_even_spread_over_a_5000_frame_track(max_crops):
    n = 5000
    b = make_builder(max_crops=max_crops, max_length=10 * n, min_length=1)
    dets, tracks = present(1)
    peak = 0
    for i in range(n):
        assert b.update(frame(i), dets, tracks) == []
        peak = max(peak, b.buffered_crops)
    assert peak <= max_crops
    (t,) = b.flush()
    kept = t.frame_indices
    assert (t.first_frame, t.last_frame, t.num_frames) == (0, n - 1, n)
    assert len(kept) <= max_crops and len(kept) >= -(-max_crops // 2)
    assert kept[0] == 0
    if max_crops > 1:
        gaps = np.diff(kept)
        assert gaps.max() <= 2 * gaps.min()
        assert kept[-1] >= n - 1 - 2 * n / max_crops
    assert t.crops.shape[0] == len(kept)


def test_sampling_does_not_alias_with_a_detector_on_every_other_frame():
    b = make_builder(max_crops=16, max_length=10_000)
    n = 2000
    for i in range(n):
        b.update(frame(i), *observe([(1, GOOD, 0.9, None if i % 2 else -1)]))
    (t,) = b.flush()
    assert len(t) >= 8
    assert (t.frame_indices % 2 == 1).all()
    assert t.frame_indices[-1] >= n - 1 - 2 * n / 16


def test_chunk_numbers_keep_counting_when_a_track_id_comes_back():
    b = make_builder(max_length=4, max_gap=1)
    frames = {i: present(2) for i in [*range(6), *range(10, 14)]}
    closed = [t for _, ts in run(b, frames, 14) for t in ts] + b.flush()
    assert [(t.chunk, t.first_frame, t.last_frame) for t in closed] == [(0, 0, 3), (2, 10, 13)]
    assert b.stats["dropped_short"] == 1  # chunk 1 (frames 4-5) was too short but kept its number


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"min_length": 0}, "min_length"),
        ({"min_length": 17, "max_crops": 32}, "min_length"),
        ({"max_length": 3}, "min_length"),
        ({"max_gap": -1}, "max_gap"),
        ({"max_crops": 0}, "max_crops"),
        ({"min_box_height": 0}, "min_box_height"),
        ({"min_box_width": 0}, "min_box_width"),
        ({"crop_height": 0}, "crop_height"),
        ({"forget_after": -1}, "forget_after"),
    ],
)
def test_inconsistent_settings_are_one_line_config_errors(settings, key):
    """The builder's rules are the schema's: bad settings never reach it."""
    with pytest.raises(ConfigError) as err:
        make_builder(**settings)
    assert str(err.value).startswith(f"TrackletConfig: {key}: ") and "\n" not in str(err.value)


def test_largest_min_length_the_schema_allows_is_reached_by_a_decimated_piece():
    """``min_length = ceil(max_crops / 2)`` (the schema's bound): a long track still gives a tracklet."""
    b = make_builder(max_crops=5, min_length=3, max_length=10_000)
    run(b, {i: present(1) for i in range(1000)}, 1000)
    (t,) = b.flush()
    assert 3 <= len(t) <= 5


@pytest.mark.parametrize(
    "camera, index, track_ids, match",
    [
        ("other", 1, (), "camera_id"),
        (CAM, 0, (), "frame_index"),  # frame 0 was already given
        (CAM, 1, (1, 1), "unique"),
    ],
)
def test_bad_input_raises(camera, index, track_ids, match):
    b = make_builder()
    b.update(frame(0), *EMPTY)
    with pytest.raises(ValueError, match=match):
        b.update(Frame(camera, index, 0.0, IMAGE), *present(*track_ids))


def test_watermark_bounds_the_end_of_every_later_tracklet():
    """Random tracks appearing, pausing and leaving: after each frame, no tracklet emitted later ends
    before the builder's watermark (what the matcher's ordering relies on)."""
    rng = np.random.default_rng(11)
    b = make_builder(max_gap=5, max_length=25, min_length=1, max_crops=4)
    assert b.watermark == -np.inf
    marks: list[tuple[int, float]] = []  # (tracklets emitted before, watermark)
    emitted = []
    alive: set[int] = set()
    next_id = 1
    for i in range(400):
        if rng.random() < 0.08:
            alive.add(next_id)
            next_id += 1
        alive = {t for t in alive if rng.random() > 0.01}
        visible = [t for t in sorted(alive) if rng.random() > 0.25]
        emitted += b.update(frame(i), *present(*visible))
        marks.append((len(emitted), b.watermark))
        assert b.watermark <= frame(i).timestamp
    emitted += b.flush()
    assert len(emitted) > 20 and any(t.chunk > 0 for t in emitted)
    for before, wm in marks:
        assert all(t.end_time >= wm for t in emitted[before:])


# ----------------------------------------------------------------------------------------------------
# Per-frame boxes (track_frames / track_boxes): every seen frame, the tracker's box clipped to the frame


def _tracked(track_id: int, tracker_box, det_box=GOOD, score: float = 0.9, det_index: int = 0):
    """One person whose detection is ``det_box`` and whose tracker estimate is ``tracker_box``."""
    dets = Detections(np.array([det_box], np.float32), np.array([score], np.float32), np.zeros(1, np.int64))
    tracks = Tracks(
        np.array([track_id]), np.array([tracker_box], np.float32), np.array([score]), np.array([det_index])
    )
    return dets, tracks


@pytest.mark.parametrize(
    "seen, max_length, expected_pieces",
    [
        # frames seen (gaps within max_gap included), the pieces' (first, last) frames
        (list(range(6)), 300, [(0, 5)]),
        ([0, 1, 4, 5, 9, 10], 300, [(0, 10)]),  # gaps of 2 and 3 frames stay one piece (max_gap 30)
        (list(range(12)), 5, [(0, 4), (5, 9)]),  # the 2-frame remainder is dropped (min_length 4)
        ([3, 4, 5, 6], 300, [(3, 6)]),  # a track that starts late: frames are absolute
    ],
)
def test_track_boxes_hold_every_seen_frame_of_the_piece(seen, max_length, expected_pieces):
    b = make_builder(max_length=max_length)
    box = {i: (100.0 + i, 100.0, 160.0 + i, 260.0) for i in seen}
    closed = [
        t
        for i in range(max(seen) + 1)
        for t in b.update(frame(i), *(_tracked(2, box[i], box[i]) if i in seen else EMPTY))
    ]
    closed += b.flush()
    assert [(t.first_frame, t.last_frame) for t in closed] == expected_pieces
    for t in closed:
        want = [i for i in seen if t.first_frame <= i <= t.last_frame]
        assert t.track_frames.dtype == np.int64 and t.track_boxes.dtype == np.float32
        assert t.track_frames.tolist() == want and len(want) == t.num_frames
        np.testing.assert_array_equal(t.track_boxes, np.array([box[i] for i in want], np.float32))


def test_track_boxes_are_the_tracker_boxes_clipped_also_in_frames_without_a_crop():
    """The per-frame box is the tracker's (not the detection's), clipped to the 640 x 480 frame, and it is
    recorded in frames that give no crop (unmatched, low score) too."""
    b = make_builder()
    steps = [
        (_tracked(1, (400.0, 300.0, 460.0, 460.0)), [400.0, 300.0, 460.0, 460.0]),
        (_tracked(1, (-15.5, -3.0, 50.0, 500.0)), [0.0, 0.0, 50.0, 480.0]),  # overhangs: clipped
        (_tracked(1, (600.0, 400.0, 700.0, 520.0), det_index=-1), [600.0, 400.0, 640.0, 480.0]),  # unmatched
        (_tracked(1, (10.0, 20.0, 30.0, 40.0), score=0.05), [10.0, 20.0, 30.0, 40.0]),  # low_conf
        (_tracked(1, (np.nan, 1.0, 2.0, 3.0)), [10.0, 20.0, 30.0, 40.0]),  # not finite: the previous box
        *[(_tracked(1, (100.0, 100.0, 160.0, 260.0)), [100.0, 100.0, 160.0, 260.0]) for _ in range(4)],
    ]
    for i, (obs, _) in enumerate(steps):
        assert b.update(frame(i), *obs) == []
    (t,) = b.flush()
    assert t.track_frames.tolist() == list(range(len(steps)))
    np.testing.assert_array_equal(t.track_boxes, np.array([want for _, want in steps], np.float32))
    # the crops still come from the detections, of the usable frames only
    assert t.frame_indices.tolist() == [0, 1, 4, 5, 6, 7, 8]
    np.testing.assert_array_equal(t.boxes, np.array([GOOD] * 7, np.float32))


def test_track_boxes_of_a_one_frame_piece():
    b = make_builder(min_length=1)
    b.update(frame(0), *_tracked(9, (1.0, 2.0, 3.0, 4.0)))
    (t,) = b.flush()
    assert t.track_frames.tolist() == [0] and t.track_boxes.tolist() == [[1.0, 2.0, 3.0, 4.0]]


# ------------------------------------------------------------------------------------------------------------
# crops that show two people


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([[0, 0, 10, 20]], 0.0),  # alone
        ([[0, 0, 10, 20], [20, 0, 30, 20]], 0.0),  # apart
        ([[0, 0, 10, 20], [5, 0, 15, 20]], 0.5),  # half of its width behind another
        ([[0, 0, 10, 20], [5, 0, 15, 20], [0, 10, 10, 20]], 0.5),  # the most one other box covers
        ([[2, 2, 8, 18], [0, 0, 10, 20]], 1.0),  # wholly inside a bigger one
        ([[0, 0, 0, 20], [0, 0, 10, 20]], 0.0),  # zero area
    ],
)
def test_covered_fraction(boxes, expected):
    assert covered_fraction(np.array(boxes, np.float32), 0) == pytest.approx(expected)


@pytest.mark.parametrize(("max_overlap", "rejected"), [(0.4, 1), (0.5, 0), (1.0, 0)])
def test_a_box_mostly_covered_by_another_detection_gives_no_crop(max_overlap, rejected):
    b = make_builder(max_overlap=max_overlap)
    frame = Frame(CAM, 0, 0.0, np.zeros((200, 200, 3), np.uint8))
    boxes = np.array([[50, 20, 90, 120], [70, 20, 110, 120]], np.float32)  # each covers half of the other
    dets = Detections(boxes, np.array([0.9, 0.9], np.float32), np.zeros(2, np.int64))
    tracks = Tracks(np.array([1]), boxes[:1].astype(np.float64), np.array([0.9]), np.array([0]))
    b.update(frame, dets, tracks)
    assert b.stats["crops_rejected"]["occluded"] == rejected
