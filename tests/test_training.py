"""Training, checkpoints and the command-line tools on real PKU-Reid identities and the real OSNet weights."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import cv2
import pytest
import torch

from models.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    load_drsta,
    read_checkpoint,
)
from models.train import TrainConfig, TrainConfigError, load_train_config, train
from pipeline.config import ConfigError
from tests.conftest import REPO, shared_path

FEW_IDS = ["001", "003", "007", "008", "010", "011"]


def tiny_config(pku_root, osnet_msmt17, out_dir, **extra):
    sets = [
        f"data.root={pku_root}",
        f"backbone_weights={osnet_msmt17}",
        f"out_dir={out_dir}",
        f"data.ids={json.dumps(FEW_IDS)}",
        "data.val_fraction=0",
        "batch_p=6",
        "eval_every=100",
        "stages="
        + json.dumps(
            [
                {"name": "attention", "epochs": 80, "lr": 0.1, "lr_step": 60, "train": ["spatial", "fc"]},
                {
                    "name": "joint",
                    "epochs": 10,
                    "lr": 0.01,
                    "train": ["spatial", "enhance", "temporal", "fc"],
                },
            ]
        ),
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_train_config(REPO / "configs" / "drsta_pku_osnet.yaml", sets)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pku = shared_path("data/pku-reid")
    weights = shared_path("assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth")
    out = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(pku, weights, out)
    return cfg, train(cfg), out


@pytest.mark.slow
def test_tiny_training_run_reaches_rank1_on_its_identities(trained):
    _, final, out = trained
    assert final["train"]["num_query"] == 2 * len(FEW_IDS)  # every tracklet queries the other camera
    assert final["train"]["rank1"] == 1.0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 90
    assert rows[-1]["id"] < rows[0]["id"]  # the identity loss went down
    assert "epoch" in (out / "log.csv").read_text().splitlines()[0].split(",")


@pytest.mark.slow
def test_checkpoint_round_trip_with_weights_only(trained, pku_root):
    _, _, out = trained
    raw = torch.load(out / "final.pt", map_location="cpu", weights_only=True)  # plain data only
    assert "backbone" not in raw and raw["backbone_weights"]["sha256"]
    model = load_drsta(out / "final.pt")
    img = cv2.imread(str(pku_root / "001" / "01_1.png"))
    from models.backbones import preprocess_crops

    x = preprocess_crops([img] * model.num_frames)[None]
    a = model.embed(x).embeddings
    again = load_drsta(out / "final.pt").embed(x).embeddings
    torch.testing.assert_close(a, again)
    assert abs(a.norm().item() - 1.0) < 1e-5


@pytest.mark.slow
def test_resume_continues_the_history(pku_root, osnet_msmt17, tmp_path):
    stages = [{"name": "attention", "epochs": 2, "lr": 0.1, "train": ["spatial", "fc"]}]
    cfg = tiny_config(pku_root, osnet_msmt17, tmp_path, stages=json.dumps(stages))
    train(cfg)
    longer = tiny_config(pku_root, osnet_msmt17, tmp_path, stages=json.dumps([{**stages[0], "epochs": 4}]))
    train(longer, resume=True)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]


def test_wrong_architecture_checkpoint_is_a_clear_error(tmp_path):
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"default checkpoint {DEFAULT_CHECKPOINT} absent")
    payload = read_checkpoint(DEFAULT_CHECKPOINT)
    payload["config"] = {**payload["config"], "num_parts": 4}  # the head was trained with K=6
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: head does not match the architecture"):
        load_drsta(bad, backbone_weights=None)


class Evil:
    def __reduce__(self):
        return (print, ("this ran code",))


@pytest.mark.parametrize(
    "content, match",
    [
        (lambda p: torch.save({"format": "drsta-checkpoint/1", "x": Evil()}, p), "weights_only"),
        (lambda p: p.write_bytes(pickle.dumps(Evil())), "weights_only"),
        (lambda p: torch.save({"format": "something-else"}, p), "not a DRSTA checkpoint"),
        (lambda p: p.write_bytes(b""), "weights_only"),
    ],
)
def test_unsafe_or_foreign_checkpoints_are_refused(tmp_path, content, match, capsys):
    p = tmp_path / "ckpt.pt"
    content(p)
    with pytest.raises(CheckpointError, match=match) as err:
        read_checkpoint(p)
    assert str(p) in str(err.value) and "\n" not in str(err.value)
    assert "this ran code" not in capsys.readouterr().out


def test_missing_checkpoint_file():
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint("/nonexistent/ckpt.pt")


@pytest.mark.parametrize(
    "sets, match",
    [
        (["model.num_partz=3"], "unknown key"),
        (["stages.0.train=[spatial, wings]"], "unknown part 'wings'"),
        (["regularizer=kl"], "regularizer"),
        (["model.temporal_pooling=median"], "temporal_pooling"),
        (["nokey"], "expected key=value"),
    ],
)
def test_bad_training_config_is_named(sets, match):
    with pytest.raises(TrainConfigError, match=match):
        load_train_config(REPO / "configs" / "drsta_pku_osnet.yaml", sets)


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("batch_p: many\n", "batch_p", "expected an integer, got 'many'"),
        ("model: {num_partz: 3}\n", "model.num_partz", "unknown key"),
        ("model: {num_frames: 0}\n", "model.num_frames", "positive integer"),
        ("stages: [{name: a}]\n", "stages[0].epochs", "missing required key"),
        ("stages: []\n", "stages", "at least one stage"),
        ("data: {root: 3}\n", "data.root", "expected a string"),
        ("flip: 1\n", "flip", "expected true or false"),
        ("loss: arcface\n", "loss", "expected one of"),
        ("device: gpu\n", "device", "cuda:N"),
    ],
)
def test_bad_training_yaml_is_one_line_naming_file_and_key(tmp_path, text, key, fragment):
    """The training config goes through the same loader as cams.yaml: typed, strict, one line."""
    path = tmp_path / "train.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: ") and fragment in message and "\n" not in message
    assert TrainConfigError is ConfigError


def test_overrides_win_over_the_yaml_which_wins_over_the_defaults(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("seed: 5\nbatch_p: 4\nstages: [{name: a, epochs: 3}]\n")
    cfg = load_train_config(path, ["seed=7", "stages.0.lr=0.01"])
    assert (cfg.seed, cfg.batch_p, cfg.batch_k) == (7, 4, TrainConfig().batch_k)
    assert (cfg.stages[0].name, cfg.stages[0].epochs, cfg.stages[0].lr) == ("a", 3, 0.01)
    with pytest.raises(ConfigError, match=r"^" + str(path) + r" \(--set\): batch_k: must be >= 1"):
        load_train_config(path, ["batch_k=0"])


@pytest.mark.parametrize("name", ["drsta_pku_osnet.yaml", "drsta_mars.yaml"])
def test_shipped_training_configs_load(name):
    cfg = load_train_config(REPO / "configs" / name)
    assert cfg.model.num_frames == 6 and cfg.stages


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_missing_dataset_root_is_a_one_line_error(tmp_path):
    r = run_cli("-m", "models.evaluate", "--dataset", "folder", "--root", str(tmp_path / "nope"))
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "nope" in last
    assert "Traceback" not in r.stderr
    r = run_cli(
        "-m", "models.train", "--config", "configs/drsta_pku_osnet.yaml", "--set", f"data.root={tmp_path}/x"
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "x" in r.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_default_checkpoint_beats_its_backbones_own_embedding_on_held_out_ids(pku_root, tmp_path):
    """The honest baseline: the same backbone's own trained embedding, mean-pooled over the tracklet, under the
    standard protocol, at 6 and at 2 frames per tracklet, on the PKU ids the checkpoint never trained on."""
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"default checkpoint {DEFAULT_CHECKPOINT} absent")
    ids = DEFAULT_CHECKPOINT.with_suffix(".json")
    out = tmp_path / "drsta.json"
    plot = tmp_path / "cmc.png"
    r = run_cli(
        "-m", "models.evaluate", "--dataset", "folder", "--root", str(pku_root), "--ids", str(ids),
        "--compare", "own", "--frames", "6", "2", "--json", str(out), "--plot", str(plot),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    runs = json.loads(out.read_text())["runs"]
    assert cv2.imread(str(plot)) is not None
    for n in (6, 2):
        ours = next(v for k, v in runs.items() if k.startswith("DRSTA") and k.endswith(f"@ {n} frames"))
        base = next(v for k, v in runs.items() if "own embedding" in k and k.endswith(f"@ {n} frames"))
        assert ours["num_query"] == base["num_query"] == 20  # 10 held-out ids x 2 cameras
        assert ours["rank1"] >= base["rank1"] and ours["mAP"] >= base["mAP"], (n, ours, base)
        assert ours["rank1"] + ours["mAP"] > base["rank1"] + base["mAP"] or base["mAP"] == 1.0, (n, ours, base)


@pytest.mark.slow
def test_visualize_draws_the_attention(pku_root, tmp_path):
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"default checkpoint {DEFAULT_CHECKPOINT} absent")
    out = tmp_path / "att.png"
    r = run_cli(
        "-m", "models.visualize", "--tracklet", str(pku_root / "013"), "--glob", "02_*", "--out", str(out)
    )
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 1000 and img.shape[1] > 600  # 6 frames x (1 + 6 parts)
