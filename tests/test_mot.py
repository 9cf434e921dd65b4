"""MOT file I/O, the tracklet JSON record, and evaluate_mot (IDF1 / MOTA by motmetrics, HOTA by trackeval)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.camera.mot_io import append_mot_rows, read_mot, tracklet_to_json, write_mot
from pipeline.tools.evaluate_mot import (
    EvaluationInputError,
    ScoredFrame,
    box_iou,
    evaluate,
    iou_distance,
    main,
    trackeval_sequence_data,
)
from pipeline.transport.messages import Tracklet, Tracks
from tests.conftest import REPO, shared_path


def tracks(rows: list[tuple[int, float, float, float, float, float]]) -> Tracks:
    if not rows:
        return Tracks.empty()
    a = np.array(rows, np.float64)
    return Tracks(a[:, 0].astype(np.int64), a[:, 1:5], a[:, 5], np.full(len(rows), -1))


# ---------------------------------------------------------------------------------------------- MOT file I/O


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [(0, [])],
        [(0, [(1, 10.0, 20.0, 50.0, 120.0, 0.9)])],
        [
            (0, [(1, 10.0, 20.0, 50.0, 120.0, 0.9), (2, 0.5, 1.25, 30.75, 99.0, 0.123456)]),
            (4, [(2, 1, 2, 3, 4, 1)]),
        ],
    ],
)
def test_append_then_read_roundtrip(tmp_path, frames):
    path = tmp_path / "seq.txt"
    with open(path, "w") as fh:
        written = sum(append_mot_rows(fh, i, tracks(rows)) for i, rows in frames)
    got = read_mot(path)
    expected = [
        [i + 1, tid, x1, y1, x2 - x1, y2 - y1, conf, -1, -1, -1]
        for i, rows in frames
        for tid, x1, y1, x2, y2, conf in rows
    ]
    assert written == len(expected)
    assert got.shape == (len(expected), 10)
    np.testing.assert_allclose(got[:, :6], np.array(expected).reshape(-1, 10)[:, :6], atol=0.005)
    np.testing.assert_allclose(got[:, 6:], np.array(expected).reshape(-1, 10)[:, 6:], atol=5e-5)
    write_mot(tmp_path / "again.txt", got)
    assert (tmp_path / "again.txt").read_text() == path.read_text()


def test_mot_line_format():
    fh = io.StringIO()
    append_mot_rows(fh, 0, tracks([(7, 10.0, 20.0, 50.5, 120.0, 0.9)]))
    assert fh.getvalue() == "1,7,10.00,20.00,40.50,100.00,0.9000,-1,-1,-1\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("1,2,3\n", "columns"),
        ("1,1,1,1,1,1,1\n1,1,1,1,1,1\n", ":2: expected 7 columns"),
        ("a,b,c,d,e,f\n", ":1:"),
    ],
)
def test_read_mot_rejects_malformed_lines(tmp_path, text, match):
    (tmp_path / "bad.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_mot(tmp_path / "bad.txt")


def test_read_mot_of_blank_file_is_empty(tmp_path):
    (tmp_path / "e.txt").write_text("\n\n")
    assert read_mot(tmp_path / "e.txt").shape == (0, 10)


@pytest.mark.parametrize("num_crops", [1, 3])
def test_tracklet_to_json(num_crops):
    t = Tracklet(
        camera_id="lobby",
        track_id=12,
        chunk=2,
        first_frame=100,
        last_frame=190,
        start_time=1_714_564_800.25,
        end_time=1_714_564_803.25,
        num_frames=80,
        frame_indices=np.arange(num_crops) + 100,
        timestamps=np.full(num_crops, 1_714_564_800.25),
        boxes=np.zeros((num_crops, 4)),
        scores=np.ones(num_crops),
        crops=np.zeros((num_crops, 8, 4, 3), np.uint8),
    )
    d = tracklet_to_json(t)
    assert d == {
        "camera": "lobby",
        "track_id": 12,
        "chunk": 2,
        "first_frame": 100,
        "last_frame": 190,
        "start_time": "2024-05-01T12:00:00.250Z",
        "end_time": "2024-05-01T12:00:03.250Z",
        "num_frames": 80,
        "num_crops": num_crops,
    }
    assert datetime.fromisoformat(d["start_time"]).timestamp() == t.start_time
    json.dumps(d)


# ---------------------------------------------------------------------------------------------- evaluation

# Synthetic sequence: pedestrians 1 and 2 in frames 1-4, plus non-counted boxes in frame 1.
_GT_ROWS = [
    *[(f, 1, 10, 10, 50, 100, 1, 1, 1.0) for f in range(1, 5)],
    *[(f, 2, 300, 10, 50, 100, 1, 1, 1.0) for f in range(1, 5)],
    (1, 3, 600, 10, 50, 100, 0, 8, 1.0),  # distractor
    (1, 4, 600, 300, 80, 40, 0, 3, 1.0),  # car
    (1, 5, 10, 300, 50, 100, 0, 1, 1.0),  # pedestrian not considered
]
_PERFECT = [(f, i, x, y, w, h) for f, i, x, y, w, h, *_ in _GT_ROWS if i in (1, 2)]


def _write_seq(root: Path, gt_rows, pred_rows, seq: str = "SEQ-01") -> tuple[Path, Path]:
    (root / "gt" / seq / "gt").mkdir(parents=True, exist_ok=True)
    (root / "pred").mkdir(exist_ok=True)
    (root / "gt" / seq / "gt" / "gt.txt").write_text("".join(",".join(map(str, r)) + "\n" for r in gt_rows))
    (root / "pred" / f"{seq}.txt").write_text(
        "".join(",".join(map(str, r)) + ",1,-1,-1,-1\n" for r in pred_rows)
    )
    return root / "gt", root / "pred"


# HOTA values: trackeval averages over its 19 thresholds alpha = 0.05 .. 0.95. With perfect boxes DetA is the
# same at every alpha: HOTA = sqrt(DetA * AssA), AssA = sum over TPs of TPA / (TPA + FNA + FPA) / TP.
@pytest.mark.parametrize(
    "name, pred, mota, idf1, idsw, hota",
    [
        ("perfect", _PERFECT, 1.0, 1.0, 0, 1.0),
        ("empty prediction", [], 0.0, 0.0, 0, 0.0),
        # DetA 7/8; AssA (4 * 1 + 3 * 3/4) / 7
        ("one miss", _PERFECT[:-1], 7 / 8, 14 / 15, 0, (7 / 8 * 6.25 / 7) ** 0.5),
        ("one false positive", [*_PERFECT, (2, 9, 900, 400, 40, 80)], 7 / 8, 16 / 17, 0, (8 / 9) ** 0.5),
        (  # DetA 1; every TP's track pair overlaps 2 of 4 + 4 - 2 detections: AssA 1/3
            "ids swapped from frame 3",
            [(f, 3 - i if f >= 3 else i, *b) for f, i, *b in _PERFECT],
            0.75,
            0.5,
            2,
            (1 / 3) ** 0.5,
        ),
        ("box on a distractor is removed", [*_PERFECT, (1, 9, 600, 10, 50, 100)], 1.0, 1.0, 0, 1.0),
        (
            "box on a car is a false positive",
            [*_PERFECT, (1, 9, 600, 300, 80, 40)],
            7 / 8,
            16 / 17,
            0,
            (8 / 9) ** 0.5,
        ),
        (
            "box on a non-considered pedestrian is FP",
            [*_PERFECT, (1, 9, 10, 300, 50, 100)],
            7 / 8,
            16 / 17,
            0,
            (8 / 9) ** 0.5,
        ),
        ("boxes outside gt frames are ignored", [*_PERFECT, (99, 1, 10, 10, 50, 100)], 1.0, 1.0, 0, 1.0),
        (  # IoU 20/80 = 0.25: a HOTA match for alpha 0.05 .. 0.25 (5 of 19), never a MOTA match
            "IoU below 0.5 is no match",
            [(f, i, x + 30, y, w, h) for f, i, x, y, w, h in _PERFECT],
            -1.0,
            0.0,
            0,
            5 / 19,
        ),
    ],
)
def test_evaluate_synthetic(tmp_path, name, pred, mota, idf1, idsw, hota):
    gt_root, pred_root = _write_seq(tmp_path, _GT_ROWS, pred)
    r = evaluate(gt_root, pred_root)
    for scope in (r["sequences"]["SEQ-01"], r["overall"]):
        assert scope["MOTA"] == pytest.approx(mota), name
        assert scope["IDF1"] == pytest.approx(idf1), name
        assert scope["HOTA"] == pytest.approx(hota), name
        assert scope["IDSW"] == idsw and scope["GT"] == 8 and scope["frames"] == 4
    assert r["overall"]["ignored_pred_rows"] == sum(1 for row in pred if row[0] > 4)


def test_evaluate_sequence_without_counted_gt_gives_null_metrics(tmp_path):
    gt_root, pred_root = _write_seq(tmp_path, [(1, 3, 600, 10, 50, 100, 0, 8, 1.0)], [])
    r = evaluate(gt_root, pred_root)
    for scope in (r["sequences"]["SEQ-01"], r["overall"]):
        assert scope["MOTA"] is None and scope["IDF1"] is None and scope["GT"] == 0
        assert scope["HOTA"] is None and scope["DetA"] is None and scope["AssA"] is None


# One pedestrian (50 x 100) in frames 1-8. A shift of 11 px gives IoU 39/61 = 0.639: a HOTA match for
# alpha 0.05 .. 0.60 (12 of 19 thresholds), and still a MOTA/IDF1 match (IoU >= 0.5).
_ONE_GT = [(f, 1, 100, 50, 50, 100, 1, 1, 1.0) for f in range(1, 9)]


def _one_pred(dx: float = 0.0, new_id_from: int = 99) -> list[tuple]:
    return [(f, 1 if f < new_id_from else 2, 100 + dx, 50, 50, 100) for f in range(1, 9)]


@pytest.mark.parametrize(
    "name, pred, hota, det_a, ass_a, mota",
    [
        ("perfectly tracked", _one_pred(), 1.0, 1.0, 1.0, 1.0),
        ("empty prediction", [], 0.0, 0.0, 0.0, 0.0),
        ("new id halfway", _one_pred(new_id_from=5), 0.5**0.5, 1.0, 0.5, 7 / 8),
        # localisation error is invisible to MOTA while IoU >= 0.5; HOTA sees it
        ("shifted to IoU 0.64", _one_pred(dx=11), 12 / 19, 12 / 19, 12 / 19, 1.0),
        ("shifted, new id halfway", _one_pred(11, 5), 12 / 19 * 0.5**0.5, 12 / 19, 6 / 19, 7 / 8),
    ],
)
def test_hota_single_object(tmp_path, name, pred, hota, det_a, ass_a, mota):
    gt_root, pred_root = _write_seq(tmp_path, _ONE_GT, pred)
    seq = evaluate(gt_root, pred_root)["sequences"]["SEQ-01"]
    assert seq["HOTA"] == pytest.approx(hota), name
    assert seq["DetA"] == pytest.approx(det_a) and seq["AssA"] == pytest.approx(ass_a), name
    assert seq["MOTA"] == pytest.approx(mota), name


def test_hota_overall_is_trackeval_combination_not_mean_of_sequences(tmp_path):
    swapped = [(f, 3 - i if f >= 3 else i, *b) for f, i, *b in _PERFECT]
    _write_seq(tmp_path, _GT_ROWS, _PERFECT, seq="SEQ-01")
    gt_root, pred_root = _write_seq(tmp_path, _GT_ROWS, swapped, seq="SEQ-02")
    r = evaluate(gt_root, pred_root)
    assert r["sequences"]["SEQ-01"]["HOTA"] == pytest.approx(1.0)
    assert r["sequences"]["SEQ-02"]["HOTA"] == pytest.approx((1 / 3) ** 0.5)
    # AssA is averaged over all 16 true positives: (8 * 1 + 8 * 1/3) / 16 = 2/3; DetA 1
    assert r["overall"]["HOTA"] == pytest.approx((2 / 3) ** 0.5)


def _frame(t, gt_ids, gt_xywh, pred_ids, pred_xywh) -> ScoredFrame:
    gt_boxes = np.array(gt_xywh, np.float64).reshape(-1, 4)
    pred_boxes = np.array(pred_xywh, np.float64).reshape(-1, 4)
    return ScoredFrame(t, np.array(gt_ids, np.int64), gt_boxes, np.array(pred_ids, np.int64), pred_boxes)


@pytest.mark.parametrize(
    "frames, gt_ids, tracker_ids, counts",
    [
        ([], [], [], (0, 0, 0, 0, 0)),
        ([_frame(1, [], [], [], [])], [[]], [[]], (0, 0, 0, 0, 1)),
        (
            [
                _frame(1, [7, 3], [(0, 0, 10, 10), (20, 0, 10, 10)], [40], [(0, 0, 10, 10)]),
                _frame(2, [3], [(20, 0, 10, 10)], [5, 40], [(20, 0, 10, 10), (0, 0, 10, 10)]),
            ],
            [[1, 0], [0]],
            [[1], [0, 1]],
            (2, 2, 3, 3, 2),
        ),
    ],
)
def test_trackeval_sequence_data(frames, gt_ids, tracker_ids, counts):
    data = trackeval_sequence_data(frames)
    assert [ids.tolist() for ids in data["gt_ids"]] == gt_ids  # relabelled to 0..n-1, order kept
    assert [ids.tolist() for ids in data["tracker_ids"]] == tracker_ids
    keys = ("num_gt_ids", "num_tracker_ids", "num_gt_dets", "num_tracker_dets", "num_timesteps")
    assert tuple(data[k] for k in keys) == counts
    for fr, sim in zip(frames, data["similarity_scores"], strict=True):
        np.testing.assert_allclose(sim, box_iou(fr.gt_xywh, fr.pred_xywh))  # no threshold
        assert sim.shape == (len(fr.gt_ids), len(fr.pred_ids))


def test_scored_frame_rejects_mismatched_shapes():
    expected = r"frame 1: expected gt_ids \(K,\) and gt_xywh \(K, 4\), got \(2,\) and \(1, 4\)"
    with pytest.raises(ValueError, match=expected):
        ScoredFrame(1, np.arange(2), np.zeros((1, 4)), np.arange(0), np.zeros((0, 4)))


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 10, 10), 1 / 3),
        ((0, 0, 10, 10), (10, 0, 10, 10), 0.0),  # touching edges
        ((0, 0, 0, 10), (0, 0, 0, 10), 0.0),  # zero area
    ],
)
def test_box_iou(a, b, expected):
    assert box_iou(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)
    assert box_iou(np.zeros((0, 4)), np.array([b])).shape == (0, 1)


@pytest.mark.parametrize(
    "iou_case", [((0, 0, 10, 10), (0, 0, 10, 10), 0.0), ((0, 0, 10, 10), (5, 0, 10, 10), None)]
)
def test_iou_distance(iou_case):
    a, b, expected = iou_case
    d = iou_distance(np.array([a]), np.array([b]))
    assert d.shape == (1, 1)
    assert np.isnan(d[0, 0]) if expected is None else d[0, 0] == expected
    assert iou_distance(np.zeros((0, 4)), np.array([b])).shape == (0, 1)


def _mot17_mini() -> Path:
    return shared_path("data/mot17-mini/train")


def _gt_as_prediction(gt_root: Path, out: Path, perturb=None) -> Path:
    """Counted GT rows (class 1, considered) of every sequence as prediction files; ``perturb(seq, rows)``."""
    out.mkdir(parents=True, exist_ok=True)
    for seq_dir in sorted(p for p in gt_root.iterdir() if (p / "gt" / "gt.txt").is_file()):
        gt = read_mot(seq_dir / "gt" / "gt.txt")
        rows = gt[(gt[:, 7] == 1) & (gt[:, 6] != 0)][:, :7]
        rows[:, 6] = 1.0
        if perturb is not None:
            rows = perturb(seq_dir.name, rows)
        write_mot(out / f"{seq_dir.name}.txt", rows)
    return out


def test_mot17_mini_ground_truth_as_prediction_scores_perfectly(tmp_path):
    gt_root = _mot17_mini()
    r = evaluate(gt_root, _gt_as_prediction(gt_root, tmp_path / "pred"))
    assert len(r["sequences"]) == 7
    for scope in [*r["sequences"].values(), r["overall"]]:
        assert scope["IDF1"] == pytest.approx(1.0) and scope["MOTA"] == pytest.approx(1.0)
        assert scope["HOTA"] == pytest.approx(1.0)
    assert r["overall"]["GT"] == 814  # class 1, considered, over the 39 annotated frames


def _drop_half(seq, rows):
    return rows[::2] if seq == "MOT17-04-FRCNN" else rows


def _swap_ids(seq, rows):
    if seq != "MOT17-04-FRCNN":
        return rows
    rows = rows.copy()
    late = rows[:, 0] >= 5
    ids = rows[late, 1]
    rows[late, 1] = np.where(ids % 2 == 0, ids - 1, ids + 1)  # 1<->2, 3<->4, ... from frame 5 on
    return rows


@pytest.mark.parametrize("perturb, idsw", [(_drop_half, False), (_swap_ids, True)])
def test_mot17_mini_perturbed_prediction_scores_lower(tmp_path, perturb, idsw):
    gt_root = _mot17_mini()
    r = evaluate(gt_root, _gt_as_prediction(gt_root, tmp_path / "pred", perturb))
    hit = r["sequences"]["MOT17-04-FRCNN"]
    assert hit["IDF1"] < 0.9 and hit["MOTA"] < 0.9 and hit["HOTA"] < 0.9
    assert (hit["IDSW"] > 0) == idsw
    # dropping boxes costs detection; swapping ids costs association only
    assert (hit["DetA"] == pytest.approx(1.0)) == idsw and hit["AssA"] < 0.9
    assert r["overall"]["IDF1"] < 1.0 and r["overall"]["MOTA"] < 1.0
    assert hit["HOTA"] < r["overall"]["HOTA"] < 1.0
    others = [s for name, s in r["sequences"].items() if name != "MOT17-04-FRCNN"]
    assert all(s["IDF1"] == pytest.approx(1.0) and s["MOTA"] == pytest.approx(1.0) for s in others)
    assert all(s["HOTA"] == pytest.approx(1.0) for s in others)


@pytest.mark.parametrize("missing", ["gt root", "pred root", "pred file", "no sequences"])
def test_missing_inputs_give_one_line_error_and_exit_code_2(tmp_path, capsys, missing):
    gt_root, pred_root = _write_seq(tmp_path, _GT_ROWS, _PERFECT)
    named = {"gt root": gt_root, "pred root": pred_root, "pred file": pred_root / "SEQ-01.txt"}.get(missing)
    if missing == "gt root":
        gt_root = tmp_path / "absent"
        named = gt_root
    elif missing == "pred root":
        pred_root = tmp_path / "absent"
        named = pred_root
    elif missing == "pred file":
        named.unlink()
    else:
        gt_root = pred_root  # a folder without <SEQ>/gt/gt.txt
        named = pred_root
    with pytest.raises(EvaluationInputError, match=str(named)):
        evaluate(gt_root, pred_root)
    assert main(["--gt-root", str(gt_root), "--pred-root", str(pred_root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(named) in err


def test_malformed_prediction_file_is_an_input_error(tmp_path, capsys):
    gt_root, pred_root = _write_seq(tmp_path, _GT_ROWS, _PERFECT)
    (pred_root / "SEQ-01.txt").write_text("1,1,not,a,number,row\n")
    assert main(["--gt-root", str(gt_root), "--pred-root", str(pred_root)]) == 2
    assert "SEQ-01.txt:1" in capsys.readouterr().err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipeline.evaluate_mot", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_writes_table_and_json(tmp_path):
    gt_root, pred_root = _write_seq(tmp_path, _GT_ROWS, _PERFECT[:-1])
    out = tmp_path / "res.json"
    proc = _cli("--gt-root", str(gt_root), "--pred-root", str(pred_root), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "SEQ-01" in proc.stdout and "OVERALL" in proc.stdout and "87.5" in proc.stdout
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:4] == ["sequence", "HOTA", "IDF1", "MOTA"]
    overall = next(r for r in rows if r.startswith("OVERALL")).split()
    assert overall[1:4] == ["88.4", "93.3", "87.5"]  # HOTA sqrt(6.25 / 8), IDF1 14/15, MOTA 7/8
    res = json.loads(out.read_text())
    assert set(res) >= {"sequences", "overall"}
    assert set(res["overall"]) >= {"HOTA", "DetA", "AssA", "IDF1", "MOTA"}
    assert res["overall"]["MOTA"] == pytest.approx(7 / 8)
    assert res["overall"]["HOTA"] == pytest.approx((6.25 / 8) ** 0.5)


def test_cli_missing_gt_root_exits_2(tmp_path):
    proc = _cli("--gt-root", str(tmp_path / "nope"), "--pred-root", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and str(tmp_path / "nope") in proc.stderr
