"""models.evaluate: tracklets cut to k frames, camera centering, and the CLI comparing a model with the honest
baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.backbones import OPENVINO_MODELS, build_backbone
from models.checkpoint import save_checkpoint
from models.datasets import TrackletRecord
from models.drsta import DRSTA, DRSTAConfig
from models.evaluate import cut_tracklets, rank_embeddings
from pipeline.matching.centering import center_by_camera
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[1]


def rec(n: int) -> TrackletRecord:
    return TrackletRecord(paths=tuple(f"f{i}.png" for i in range(n)), pid=1, camid=0, tracklet_id=f"t{n}")


@pytest.mark.parametrize(
    ("length", "frames", "kept"),
    [
        (8, 6, [0, 1, 2, 4, 5, 6]),  # first frame of each of 6 chunks
        (8, 2, [0, 4]),
        (2, 6, [0, 1]),  # shorter: kept whole (the model's own sampling repeats frames)
        (1, 2, [0]),
        (8, None, list(range(8))),  # None: every frame
    ],
)
def test_cut_tracklets(length, frames, kept) -> None:
    (out,) = cut_tracklets([rec(length)], frames)
    assert out.paths == tuple(f"f{i}.png" for i in kept)
    assert (out.pid, out.camid, out.tracklet_id) == (1, 0, f"t{length}")


def test_cut_nothing_and_bad_frames() -> None:
    assert cut_tracklets([], 2) == []
    with pytest.raises(ValueError, match="frames"):
        cut_tracklets([rec(3)], 0)


def test_cli_baseline_own_reports_every_frames_setting(tmp_path) -> None:
    pku = shared_path("data/pku-reid")
    shared_path(OPENVINO_MODELS["openvino_0288"])
    out = tmp_path / "m.json"
    cmd = [sys.executable, "-m", "models.evaluate", "--baseline", "own", "--backbone", "openvino_0288",
           "--root", str(pku), "--ids", "001,003,007,008", "--frames", "6", "2", "--json", str(out)]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    got = json.loads(out.read_text())
    assert got["num_query"] == 8  # 4 ids x 2 cameras
    assert [k.rsplit("@ ", 1)[1] for k in got["runs"]] == ["6 frames", "2 frames"]
    assert got["rank1"] == got["runs"][next(iter(got["runs"]))]["rank1"]  # top level = the first run
    assert all(len(v["cmc"]) == 8 and v["cmc"][-1] == 1.0 for v in got["runs"].values())  # gallery of 8
    assert json.loads(r.stdout.strip().splitlines()[-1]) == got  # last printed line: the JSON


def test_camera_centering_changes_a_ranking_the_camera_look_decided() -> None:
    # 20 people, each filmed by both cameras: person i is e_i plus its camera's look 1.2 * L_c (L0, L1 and the
    # e_i orthonormal). Raw cosines: another person of the own camera 1.44/2.44 = 0.59, the match in the other
    # camera 1/2.44 = 0.41, so every query's rank-1 is wrong and its match comes after 19 own-camera people.
    # Centred (prior: the people's mean without looks, weight 10; camera mean over 20 + 10): 2/3 of the look
    # goes, leaving own-camera people at 0.10 and the match at 0.86 (worked by hand; checked below).
    k, look = 20, 1.2
    emb = np.zeros((2 * k, k + 2))
    records = []
    for c in (0, 1):
        for i in range(k):
            emb[c * k + i, i], emb[c * k + i, k + c] = 1.0, look
            records.append(TrackletRecord(paths=("x.png",), pid=i + 1, camid=c, tracklet_id=f"{c}/{i}"))
    prior = np.zeros(k + 2)
    prior[:k] = 1.0 / k
    raw = rank_embeddings(emb, emb, records, records)
    assert raw.rank1 == 0.0 and raw.mAP == pytest.approx(1 / 20)
    centred = rank_embeddings(emb, emb, records, records, prior=prior)
    assert centred.rank1 == 1.0 and centred.mAP == 1.0
    # query and gallery as separate lists are centred together, with the same result
    split = rank_embeddings(emb[:k], emb[k:], records[:k], records[k:], prior=prior)
    assert split.rank1 == 1.0 and split.num_query == k
    c = center_by_camera(emb, [r.camid for r in records], prior).astype(np.float64)
    assert (c[0] @ c[1], c[0] @ c[k]) == (pytest.approx(0.1005, abs=1e-3), pytest.approx(0.8561, abs=1e-3))


@pytest.fixture(scope="module")
def ids_checkpoint(tmp_path_factory):
    """A checkpoint whose meta names two PKU training ids and the folder they are in (no centering record)."""
    pku = shared_path("data/pku-reid")
    shared_path(OPENVINO_MODELS["openvino_0288"])
    model = DRSTA(
        DRSTAConfig(backbone="resnet18", num_parts=2, num_frames=2, attn_hidden=8),
        backbone=build_backbone("resnet18", pretrained=False),
    )
    meta = {"dataset": f"PKU-Reid folder {pku}", "train_ids": json.dumps(["001", "003"])}
    path = tmp_path_factory.mktemp("ckpt") / "ids.pt"
    return pku, save_checkpoint(path, model, include_backbone=True, meta=meta)


def test_cli_center_camera_gives_the_baseline_a_prior_from_the_checkpoints_train_ids(ids_checkpoint) -> None:
    pku, ckpt = ids_checkpoint
    cmd = [sys.executable, "-m", "models.evaluate", "--baseline", "own", "--backbone", "openvino_0288",
           "--checkpoint", str(ckpt), "--root", str(pku), "--ids", "007,008", "--frames", "2",
           "--center", "camera"]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    got = json.loads(lines[-1])
    want = (
        "camera (prior: 4 train-id tracklets @ 6 frames)"  # 2 ids x 2 cameras, read from the recorded folder
    )
    assert got["center"] == "camera" and [v["centering"] for v in got["runs"].values()] == [want]
    assert lines[0].endswith(f"centering {want}") and got["num_query"] == 4
    # a missing prior folder and a DRSTA checkpoint without a recorded prior are one-line errors
    r = subprocess.run([*cmd, "--prior-root", str(pku / "nope")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "--prior-root" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    drsta = [sys.executable, "-m", "models.evaluate", "--checkpoint", str(ckpt), "--compare", "none",
             "--root", str(pku), "--ids", "007,008", "--center", "camera"]  # fmt: skip
    r = subprocess.run(drsta, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "records no centering prior" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
