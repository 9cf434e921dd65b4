"""models.evaluate: tracklets cut to k frames, and the CLI comparing a model with the honest baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.backbones import OPENVINO_MODELS
from models.datasets import TrackletRecord
from models.evaluate import cut_tracklets
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
