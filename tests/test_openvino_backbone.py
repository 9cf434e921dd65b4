"""The OpenVINO backbone on the real Intel OMZ re-ID models: its map, its own embedding, and its own layers."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from models.backbones import OPENVINO_MODELS, build_backbone, preprocess_crops
from models.datasets import read_image_bgr
from models.openvino_backbone import openvino_core
from tests.conftest import shared_path

# name -> (channels of the last spatial map, own embedding size); every map is 16x8 at 256x128
EXPECTED = {
    "openvino_0277": (512, 256),
    "openvino_0286": (384, 256),
    "openvino_0287": (256, 256),
    "openvino_0287_int8": (256, 256),
    "openvino_0288": (128, 256),
    "openvino_0267": (256, 256),
}
FOLDABLE = [n for n in EXPECTED if n != "openvino_0287_int8"]  # INT8: FakeQuantize after the pooling


@pytest.fixture(scope="module")
def pku_crops() -> torch.Tensor:
    """Four real crops: person 001 and 003, each from both cameras."""
    root = shared_path("data/pku-reid")
    paths = [
        root / "001" / "01_1.png",
        root / "001" / "02_1.png",
        root / "003" / "01_1.png",
        root / "003" / "02_1.png",
    ]
    return preprocess_crops([read_image_bgr(str(p)) for p in paths])


def backbone(name: str):
    shared_path(OPENVINO_MODELS[name])  # skips with the reason when ../shared is absent
    return _built(name)


@functools.cache
def _built(name: str):
    return build_backbone(name)  # compiling a model takes a second or two: once per module


@pytest.mark.parametrize("batch", [0, 1, 4])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_map_and_embedding_shapes(name: str, batch: int, pku_crops) -> None:
    net = backbone(name)
    d, e = EXPECTED[name]
    grid, emb = net.features_and_embedding(pku_crops[:batch])
    assert net.out_channels == d and net.input_size == (256, 128)
    assert grid.shape == (batch, d, 16, 8) and emb.shape == (batch, e)
    assert torch.isfinite(grid).all() and torch.isfinite(emb).all()
    assert (grid >= 0).all()  # the map is the ReLU output before the pooling


@pytest.mark.parametrize("name", FOLDABLE)
def test_own_head_on_the_map_equals_the_models_own_embedding(name: str, pku_crops) -> None:
    net = backbone(name)
    grid, emb = net.features_and_embedding(pku_crops)
    own = net.own_head()
    assert torch.allclose(own(grid), emb, atol=1e-4, rtol=1e-4)
    # the pooling is learned, not a plain average: the plain mean through the same layers differs
    plain = type(own)(
        torch.ones_like(own.pool_weight[:, :1, :1]), own.pool_bias, own.proj_weight, own.proj_bias, own.slope
    )
    assert not torch.allclose(plain(grid), emb, atol=1e-2)


def test_int8_tail_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="FakeQuantize"):
        backbone("openvino_0287_int8").own_head()


def test_embedding_matches_a_direct_openvino_run_on_bgr_pixels(pku_crops) -> None:
    """The backbone undoes ImageNet normalisation: the net sees the BGR 0-255 pixels it was trained on."""
    import cv2

    path = shared_path(OPENVINO_MODELS["openvino_0277"])
    root = shared_path("data/pku-reid")
    img = cv2.resize(
        read_image_bgr(str(root / "001" / "01_1.png")), (128, 256), interpolation=cv2.INTER_LINEAR
    )
    direct = openvino_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    want = direct(img.transpose(2, 0, 1)[None].astype(np.float32))[0]
    got = build_backbone("openvino_0277").image_embedding(pku_crops[:1]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


def test_same_person_is_closer_across_cameras(pku_crops) -> None:
    emb = torch.nn.functional.normalize(backbone("openvino_0277").image_embedding(pku_crops), dim=1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 3] and sim[2, 3] > sim[2, 1]


def test_missing_model_file_is_one_line(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.xml"):
        build_backbone("openvino_0277", weights=tmp_path / "nope.xml")
