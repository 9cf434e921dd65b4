"""The multi-camera evaluator: hand-worked scenes, the id rules, the inputs, and the CLI on a real store.

Every scene puts person slot ``k`` at one fixed box and predicts exactly that box, so every prediction
matches its person with IoU 1 and every figure below can be worked out by hand from box counts:
IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN), IDP = IDTP / (IDTP + IDFP), IDR = IDTP / (IDTP + IDFN), where the
IDTP come from the best one-to-one pairing of ground-truth people with predicted ids over all cameras.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.camera.mot_io import write_mot
from pipeline.tools.evaluate_mot import EvaluationInputError
from pipeline.tools.evaluate_mtmc import TrackSpan, evaluate_mtmc, load_track_spans, main, read_gt
from storage import repository as repo
from storage.db import open_store

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0


def box(slot: int) -> list[float]:
    """The xywh box of person slot ``slot``: far from every other slot."""
    return [100.0 * slot, 10.0, 40.0, 90.0]


def scene(spec: dict[str, list[tuple[int, int, int, int]]]) -> np.ndarray:
    """Rows ``frame, id, x, y, w, h`` for ``(id, slot, first, last)`` entries (frames inclusive)."""
    rows = [[f, i, *box(slot)] for i, slot, a, b in spec for f in range(a, b + 1)]
    return np.asarray(rows, np.float64).reshape(-1, 6)


def gt_of(**cams: list[tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
    return {c: scene(v) for c, v in cams.items()}


def pred_of(**cams: list[tuple[int, int, int, int]]) -> dict[str, np.ndarray]:
    """MOT result rows (10 columns, conf 1) per camera."""
    out = {}
    for c, v in cams.items():
        rows = scene(v)
        out[c] = np.hstack([rows, np.ones((len(rows), 1)), -np.ones((len(rows), 3))])
    return out


def span(camera: str, track: int, first: int, last: int, identity: int | None) -> TrackSpan:
    return TrackSpan(camera, track, first, last, identity)


# --------------------------------------------------------------------------------------------- scenes


def test_identical_prediction_scores_one_and_no_linking_half():
    # Person 1: camera A frames 1-4 (track 1), camera B frames 5-8 (track 1). The matcher gave both
    # tracklets identity 0, so the prediction is the ground truth: joint IDF1 = IDP = IDR = HOTA = 1.
    # No linking: ids (A,1) and (B,1), 4 boxes each; person 1 pairs with one of them:
    # IDTP 4, IDFP 4, IDFN 4 -> IDF1 = 8 / 16 = 0.5. Oracle joins them again: 1.0; the matcher takes all
    # of the gain.
    gt = gt_of(A=[(1, 1, 1, 4)], B=[(1, 1, 5, 8)])
    pred = pred_of(A=[(1, 1, 1, 4)], B=[(1, 1, 5, 8)])
    r = evaluate_mtmc(gt, pred, [span("A", 1, 1, 4, 0), span("B", 1, 5, 8, 0)])
    assert r.frames == (1, 8)
    assert (r.joint.idf1, r.joint.idp, r.joint.idr) == (1.0, 1.0, 1.0)
    assert r.joint.hota == pytest.approx(1.0)
    assert r.no_linking.idf1 == pytest.approx(0.5)
    assert r.oracle.idf1 == 1.0
    assert r.gain_taken == pytest.approx(1.0)
    assert (r.people_multi_camera, r.joint.people_linked, r.joint.merges, r.joint.identities) == (1, 1, 0, 1)
    assert (r.no_linking.people_linked, r.no_linking.identities) == (0, 2)
    assert [(c.camera, c.idf1_tracker, c.idf1_global) for c in r.cameras] == [
        ("A", 1.0, 1.0),
        ("B", 1.0, 1.0),
    ]


def test_per_camera_perfect_but_two_global_ids_is_not_jointly_perfect():
    # Person 1: camera A frames 1-4 (track 1, 4 boxes), camera B frames 5-10 (track 1, 6 boxes). The
    # matcher gave A's tracklet identity 0 and B's identity 1. Each camera alone is perfect (one person,
    # one id): per-camera IDF1 1.0 with tracker ids and with global ids.
    # Jointly person 1 (10 boxes) pairs with id 1 (6 boxes): IDTP 6, IDFP 4 (id 0), IDFN 4
    # -> IDF1 = 12 / 20 = 0.6, IDP = 6 / 10, IDR = 6 / 10.
    # HOTA (every IoU is 1, so DetA = 1 at every alpha): AssA averages TPA / (TPA + FNA + FPA) over the 10
    # true positives: 6 of them pair (person 1, id 1) with TPA 6, FNA 4, FPA 0 -> 0.6; 4 pair (person 1,
    # id 0) with TPA 4, FNA 6 -> 0.4; AssA = (6 * 0.6 + 4 * 0.4) / 10 = 0.52, HOTA = sqrt(0.52).
    gt = gt_of(A=[(1, 1, 1, 4)], B=[(1, 1, 5, 10)])
    pred = pred_of(A=[(1, 1, 1, 4)], B=[(1, 1, 5, 10)])
    r = evaluate_mtmc(gt, pred, [span("A", 1, 1, 4, 0), span("B", 1, 5, 10, 1)])
    assert [(c.idf1_tracker, c.idf1_global) for c in r.cameras] == [(1.0, 1.0), (1.0, 1.0)]
    assert r.joint.idf1 == pytest.approx(0.6)
    assert r.joint.idp == pytest.approx(0.6)
    assert r.joint.idr == pytest.approx(0.6)
    assert r.joint.hota == pytest.approx(math.sqrt(0.52))
    # No linking names the same boxes the same way here, so it scores the same; oracle reaches 1.0.
    assert r.no_linking.idf1 == pytest.approx(0.6)
    assert r.oracle.idf1 == 1.0
    assert r.gain_taken == pytest.approx(0.0)
    assert (r.people_multi_camera, r.joint.people_linked, r.oracle.people_linked, r.joint.merges) == (
        1,
        0,
        1,
        0,
    )


def test_two_people_sharing_one_global_id_is_a_merge():
    # Person 1: camera A frames 1-4 (track 1, 4 boxes); person 2: camera B frames 1-2 (track 2, 2 boxes).
    # The matcher gave both identity 5 (6 boxes): person 1 pairs with it, IDTP 4, IDFP 2, IDFN 2
    # -> IDF1 = 8 / 12, IDP = IDR = 4 / 6. One identity given to two people: merges = 1.
    # No linking and oracle both keep the two tracks apart: IDF1 1.0, no gain to take (gain_taken None).
    gt = gt_of(A=[(1, 1, 1, 4)], B=[(2, 2, 1, 2)])
    pred = pred_of(A=[(1, 1, 1, 4)], B=[(2, 2, 1, 2)])
    r = evaluate_mtmc(gt, pred, [span("A", 1, 1, 4, 5), span("B", 2, 1, 2, 5)])
    assert r.joint.idf1 == pytest.approx(8 / 12)
    assert r.joint.idp == pytest.approx(4 / 6)
    assert (r.joint.merges, r.no_linking.merges, r.oracle.merges) == (1, 0, 0)
    assert (r.no_linking.idf1, r.oracle.idf1, r.gain_taken) == (1.0, 1.0, None)
    assert r.people_multi_camera == 0


def test_no_linking_and_oracle_lines_bracket_the_matcher():
    # Camera A: person 1 frames 1-3 (track 1), re-enters frames 6-7 (track 2); a false track 9 (slot 5,
    # no person) frames 1-2. Camera B: person 1 frames 4-5 (track 1), person 2 frames 1-5 (track 3).
    # Ground truth: person 1 has 3 + 2 + 2 = 7 boxes, person 2 has 5: 12. Predictions: 14 boxes.
    # The matcher: A/1 and B/1 identity 0, A/2 identity 1 (re-entry missed), B/3 identity 2; A/9 never
    # became a stored tracklet, so it keeps an id of its own.
    #   no linking: person 1 <-> A/1 (3), person 2 <-> B/3 (5): IDTP 8, IDFP 6, IDFN 4 -> 16 / 26
    #   matcher:    person 1 <-> 0 (5),   person 2 <-> 2 (5):   IDTP 10, IDFP 4, IDFN 2 -> 20 / 26
    #   oracle:     A/1, A/2, B/1 -> person 1 (7), B/3 -> 2 (5), A/9 own: IDTP 12, IDFP 2, IDFN 0 -> 24 / 26
    # gain_taken = (20 - 16) / (24 - 16) = 0.5. Only person 1 is in both cameras; the matcher gave them two
    # ids (not linked), the oracle one. Per camera A: person 1 (5 boxes) <-> A/1 or identity 0 (3 boxes):
    # IDTP 3, IDFP 4, IDFN 2 -> 6 / 12 with either id; camera B is perfect.
    gt = gt_of(A=[(1, 1, 1, 3), (1, 1, 6, 7)], B=[(1, 1, 4, 5), (2, 2, 1, 5)])
    pred = pred_of(A=[(1, 1, 1, 3), (2, 1, 6, 7), (9, 5, 1, 2)], B=[(1, 1, 4, 5), (3, 2, 1, 5)])
    spans = [span("A", 1, 1, 3, 0), span("A", 2, 6, 7, 1), span("B", 1, 4, 5, 0), span("B", 3, 1, 5, 2)]
    r = evaluate_mtmc(gt, pred, spans)
    assert r.no_linking.idf1 == pytest.approx(16 / 26)
    assert r.no_linking.idp == pytest.approx(8 / 14)
    assert r.joint.idf1 == pytest.approx(20 / 26)
    assert r.oracle.idf1 == pytest.approx(24 / 26)
    assert (r.oracle.idp, r.oracle.idr) == (pytest.approx(12 / 14), 1.0)
    assert r.gain_taken == pytest.approx(0.5)
    assert (r.people_multi_camera, r.joint.people_linked, r.oracle.people_linked) == (1, 0, 1)
    assert (r.unlinked_tracks, r.unlinked_boxes, r.conflict_boxes) == (1, 2, 0)
    assert (r.joint.identities, r.no_linking.identities, r.oracle.identities) == (4, 5, 3)
    a, b = r.cameras
    assert (a.gt_boxes, a.pred_boxes, b.gt_boxes, b.pred_boxes) == (5, 7, 7, 7)
    assert (a.idf1_tracker, a.idf1_global) == (pytest.approx(0.5), pytest.approx(0.5))
    assert (b.idf1_tracker, b.idf1_global) == (1.0, 1.0)
    assert r.joint.hota < r.oracle.hota


def test_matcher_rejoining_a_reentry_raises_per_camera_idf1_above_the_tracker():
    # As above, but the matcher also gives A/2 identity 0: camera A with global ids pairs person 1 (5 boxes)
    # with identity 0 (5 boxes): IDTP 5, IDFP 2 (A/9), IDFN 0 -> 10 / 12, above the tracker's 6 / 12.
    # Jointly: IDTP 12, IDFP 2, IDFN 0 -> 24 / 26, all of the oracle's gain; person 1 is linked.
    gt = gt_of(A=[(1, 1, 1, 3), (1, 1, 6, 7)], B=[(1, 1, 4, 5), (2, 2, 1, 5)])
    pred = pred_of(A=[(1, 1, 1, 3), (2, 1, 6, 7), (9, 5, 1, 2)], B=[(1, 1, 4, 5), (3, 2, 1, 5)])
    spans = [span("A", 1, 1, 3, 0), span("A", 2, 6, 7, 0), span("B", 1, 4, 5, 0), span("B", 3, 1, 5, 2)]
    r = evaluate_mtmc(gt, pred, spans)
    assert (r.cameras[0].idf1_tracker, r.cameras[0].idf1_global) == (
        pytest.approx(0.5),
        pytest.approx(10 / 12),
    )
    assert r.joint.idf1 == pytest.approx(24 / 26)
    assert r.gain_taken == pytest.approx(1.0)
    assert r.joint.people_linked == 1


def test_unstored_piece_of_a_track_takes_the_nearest_tracklet_of_that_track():
    # Camera A track 1 runs frames 1-6; stored chunks cover 1-3 (identity 4) and 4-5 (identity 4); frame 6
    # (a piece too short to store) takes the nearest chunk's identity. Camera B track 1 frames 7-8 is
    # identity 4 as well: everything is person 1 with one id, joint IDF1 1, nothing unlinked.
    gt = gt_of(A=[(1, 1, 1, 6)], B=[(1, 1, 7, 8)])
    pred = pred_of(A=[(1, 1, 1, 6)], B=[(1, 1, 7, 8)])
    spans = [span("A", 1, 1, 3, 4), span("A", 1, 4, 5, 4), span("B", 1, 7, 8, 4)]
    r = evaluate_mtmc(gt, pred, spans)
    assert r.joint.idf1 == 1.0
    assert (r.unlinked_tracks, r.unlinked_boxes) == (0, 0)
    # A tracklet without a sighting counts as not stored: B's track is then its own identity.
    r = evaluate_mtmc(gt, pred, [*spans[:2], span("B", 1, 7, 8, None)])
    assert (r.unlinked_tracks, r.unlinked_boxes) == (1, 2)
    assert r.joint.idf1 == pytest.approx(2 * 6 / (2 * 6 + 2 + 2))


def test_an_id_names_one_box_per_frame():
    # Camera A: person 1 (track 1) and person 2 (track 2) in frames 1-2, both stored as identity 3 (a
    # matcher that put two simultaneous tracklets together). Track 1 keeps identity 3 in each frame,
    # track 2's boxes fall back to its own id: 2 conflicting boxes, and the ids then name one person each.
    gt = gt_of(A=[(1, 1, 1, 2), (2, 2, 1, 2)])
    pred = pred_of(A=[(1, 1, 1, 2), (2, 2, 1, 2)])
    r = evaluate_mtmc(gt, pred, [span("A", 1, 1, 2, 3), span("A", 2, 1, 2, 3)])
    assert r.conflict_boxes == 2
    assert (r.joint.idf1, r.joint.merges, r.joint.identities) == (1.0, 0, 2)


def test_boxes_in_frames_without_ground_truth_count_as_false_positives():
    # Person 1 in camera A frames 1-2 only; camera B has no ground truth but a track in frame 2. In the
    # evaluated range 1-2 that box is a false positive: IDTP 2, IDFP 1, IDFN 0 -> 4 / 5. With --frames 1-1
    # it is out of range: IDF1 1.
    gt = {"A": scene([(1, 1, 1, 2)]), "B": scene([])}
    pred = pred_of(A=[(1, 1, 1, 2)], B=[(7, 3, 2, 2)])
    r = evaluate_mtmc(gt, pred, [span("A", 1, 1, 2, 0)])
    assert r.joint.idf1 == pytest.approx(4 / 5)
    assert r.cameras[1].pred_boxes == 1
    assert evaluate_mtmc(gt, pred, [span("A", 1, 1, 2, 0)], frames=(1, 1)).joint.idf1 == 1.0


@pytest.mark.parametrize("with_gt", [True, False])
def test_empty_prediction(with_gt):
    # No predicted box. With ground truth (3 boxes): IDTP 0, IDFN 3 -> IDF1 0 and HOTA 0; IDP is 0 / 0,
    # undefined. Without ground truth either, nothing is defined. Nothing is linked or merged.
    gt = gt_of(A=[(1, 1, 1, 2)], B=[(1, 1, 3, 3)]) if with_gt else {"A": scene([]), "B": scene([])}
    pred = {"A": pred_of(A=[])["A"], "B": pred_of(B=[])["B"]}
    r = evaluate_mtmc(gt, pred, [])
    for line in (r.joint, r.no_linking, r.oracle):
        assert (line.idf1, line.idp, line.hota) == ((0.0, None, 0.0) if with_gt else (None, None, None))
        assert (line.identities, line.people_linked, line.merges) == (0, 0, 0)
    assert r.people_multi_camera == (1 if with_gt else 0)
    assert r.gain_taken is None


def test_mot17_ground_truth_is_filtered_as_evaluate_mot_does():
    # MOT17 layout: person 1 (class 1, considered) frames 1-2 and a static person 4 (class 7, a distractor)
    # frame 1. The track on the distractor is removed before scoring, so it neither counts as a false
    # positive nor as an identity: joint IDF1 1, 2 evaluated boxes, 1 identity.
    gt = {
        "A": np.array([[1, 1, *box(1), 1, 1, 1.0], [2, 1, *box(1), 1, 1, 1.0], [1, 4, *box(3), 1, 7, 1.0]]),
        "B": np.zeros((0, 9)),
    }
    pred = pred_of(A=[(1, 1, 1, 2), (2, 3, 1, 1)], B=[])
    r = evaluate_mtmc(gt, pred, [span("A", 1, 1, 2, 0), span("A", 2, 1, 1, 1)])
    assert (r.joint.idf1, r.cameras[0].pred_boxes, r.joint.identities) == (1.0, 2, 1)


def test_bad_predictions_are_refused():
    gt = gt_of(A=[(1, 1, 1, 1)])
    twice = pred_of(A=[(1, 1, 1, 1), (1, 2, 1, 1)])
    with pytest.raises(EvaluationInputError, match="A.txt: a track id occurs twice in one frame"):
        evaluate_mtmc(gt, twice, [], sources={"A": "A.txt"})
    with pytest.raises(EvaluationInputError, match=r"cameras differ.*\['A'\].*\['B'\]"):
        evaluate_mtmc(gt, pred_of(B=[]), [])


# --------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("3,7,10,20,30,40", [3, 7, 10, 20, 30, 40]),  # plain
        ("3,7,10,20,30,40,15", [3, 7, 10, 20, 30, 40]),  # split view: mot15_id dropped
        ("3,7,10,20,30,40,0,1,0.5", [3, 7, 10, 20, 30, 40, 0, 1, 0.5]),  # MOT16/17: kept whole
        ("3,7,10,20,30,40,1,-1,-1,-1", [3, 7, 10, 20, 30, 40, 1]),  # MOT15: consider flag kept
    ],
)
def test_read_gt_layouts(tmp_path, line, expected):
    path = tmp_path / "gt.txt"
    path.write_text(line + "\n")
    assert read_gt(path).tolist() == [expected]


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "gt file not found"), ("1,2,3,4,5,6,7,8\n", "got 8"), ("1,2,x,4,5,6\n", "gt.txt:1")],
)
def test_read_gt_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "gt.txt"
    if text is not None:
        path.write_text(text)
    with pytest.raises(EvaluationInputError, match=message) as e:
        read_gt(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_split_view_ground_truth_reads():
    # The real split view files: 6 people in left, 8 in right, 6 in both (their README).
    shared = REPO.parent / "shared" / "data" / "pets09-splitview-dev"
    if not shared.is_dir():
        pytest.skip(f"{shared} not present")
    left, right = read_gt(shared / "gt_left.txt"), read_gt(shared / "gt_right.txt")
    assert left.shape[1] == right.shape[1] == 6
    people_l, people_r = set(left[:, 1].astype(int)), set(right[:, 1].astype(int))
    assert (len(people_l), len(people_r), len(people_l & people_r)) == (6, 8, 6)


# ------------------------------------------------------------------------------------ the real store


def store_run(url: str, rows: list[tuple[str, str, int, int, int, int, int | None]]) -> None:
    """Tracklets ``(session_key, camera, track, chunk, first MOT frame, last MOT frame, identity)`` written
    with the storage API, as the pipeline does (tracklet frames count from 0)."""
    store = open_store(url)
    try:
        with store.session() as s:
            for key, camera, track, chunk, first, last, identity in rows:
                tid = repo.add_tracklet(
                    s,
                    session_key=key,
                    camera_id=camera,
                    track_id=track,
                    chunk=chunk,
                    first_frame=first - 1,
                    last_frame=last - 1,
                    start_time=T0 + (first - 1) / 10,
                    end_time=T0 + (last - 1) / 10,
                    num_frames=last - first + 1,
                )
                if identity is not None:
                    repo.ensure_identity(s, identity, created_at=T0)
                    repo.add_sighting(s, tid, identity, None, T0 + 100)
            s.commit()
    finally:
        store.dispose()


@pytest.fixture
def run_dir(tmp_path):
    """The hand-worked "per-camera perfect" scene as a finished run: SQLite store, MOT files, split-view GT."""
    out = tmp_path / "out"
    out.mkdir()
    pred = pred_of(left=[(1, 1, 1, 4)], right=[(1, 1, 5, 10)])
    for cam, rows in pred.items():
        write_mot(out / f"{cam}.txt", rows)
    for cam, rows in gt_of(left=[(1, 1, 1, 4)], right=[(1, 1, 5, 10)]).items():
        split = np.hstack([rows, np.full((len(rows), 1), 9.0)])  # the split view's mot15_id column
        np.savetxt(tmp_path / f"gt_{cam}.txt", split, fmt="%g", delimiter=",")
    url = f"sqlite:///{tmp_path / 'run.db'}"
    store_run(url, [("run1", "left", 1, 0, 1, 4, 0), ("run1", "right", 1, 0, 5, 10, 1)])
    gt = [f"--gt=left={tmp_path / 'gt_left.txt'}", f"--gt=right={tmp_path / 'gt_right.txt'}"]
    return url, out, gt


def test_cli_end_to_end_on_a_store_written_with_the_storage_api(run_dir, capsys):
    url, out, gt = run_dir
    assert main(["--db", url, "--pred-root", str(out), *gt, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["joint_idf1"] == pytest.approx(0.6)  # as in the hand-worked test above
    assert (result["no_linking_idf1"], result["oracle_idf1"]) == (pytest.approx(0.6), 1.0)
    assert (result["merges"], result["people_linked"]) == (0, 0)
    assert [c["idf1_global"] for c in result["cameras"]] == [1.0, 1.0]
    assert result["frames"] == [1, 10]


def test_cli_table_as_a_module(run_dir):
    url, out, gt = run_dir
    cmd = [sys.executable, "-m", "pipeline.tools.evaluate_mtmc", "--db", url, "--pred-root", str(out), *gt]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split("  ")[0]: line.split() for line in done.stdout.splitlines()}
    assert rows["matcher"][1:4] == ["60.0", "60.0", "60.0"]
    assert rows["oracle linking"][2:5] == ["100.0", "100.0", "100.0"]


def test_several_runs_in_the_store_need_a_session(run_dir, capsys):
    url, out, gt = run_dir
    # A second run of the same cameras, in which the matcher linked both tracklets.
    store_run(url, [("run2", "left", 1, 0, 1, 4, 7), ("run2", "right", 1, 0, 5, 10, 7)])
    assert main(["--db", url, "--pred-root", str(out), *gt]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 runs" in err and "--session" in err
    assert main(["--db", url, "--pred-root", str(out), *gt, "--session", "run2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["joint_idf1"] == 1.0
    assert main(["--db", url, "--pred-root", str(out), *gt, "--session", "nope"]) == 2
    assert "'nope': no tracklets" in capsys.readouterr().err


def test_load_track_spans_converts_frames_to_mot(tmp_path):
    url = f"sqlite:///{tmp_path / 'run.db'}"
    store_run(
        url, [("k", "left", 3, 0, 1, 5, 2), ("k", "left", 3, 1, 6, 9, None), ("k", "other", 1, 0, 1, 1, 2)]
    )
    store = open_store(url)
    try:
        with store.session(readonly=True) as s:
            spans = load_track_spans(s, ["left"])
    finally:
        store.dispose()
    assert spans == [TrackSpan("left", 3, 1, 5, 2), TrackSpan("left", 3, 6, 9, None)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gt", "left"], "expected CAMERA=FILE"),
        (["--frames", "5-2"], "--frames '5-2'"),
        (["--db", "sqlite:////nonexistent/x.db"], "database not found: /nonexistent/x.db"),
        (["--db", "not a url"], "not an SQLAlchemy URL"),
        (["--db", "postgresql://reid:s3cret@127.0.0.1:1/x"], "cannot open store postgresql://reid:***@"),
        (["--pred-root", "/nonexistent"], "pred root not found"),
        (["--gt", "right=/nonexistent/gt.txt"], "gt file not found: /nonexistent/gt.txt"),
    ],
)
def test_cli_bad_input_is_one_line(run_dir, capsys, args, message):
    url, out, gt = run_dir
    opts = {"--db": url, "--pred-root": str(out)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag == "--gt":
            gt = [f"--gt={value}"]
        else:
            opts[flag] = value
    assert main([x for kv in opts.items() for x in kv] + gt) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert "s3cret" not in err
