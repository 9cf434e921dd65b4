"""``reid.num_frames`` does what it says: the encoder feeds the network that many frames per tracklet, chosen
by restricted random sampling (first frame of each of N equal chunks), or the network's own N when left out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backbones import build_backbone, preprocess_crops
from models.drsta import DRSTA, DRSTAConfig
from models.sampling import restricted_random_sample
from pipeline.config import ReIDConfig
from pipeline.reid.worker import TrackletEncoder
from pipeline.transport.messages import Tracklet

OWN_N = 4  # the N the test networks are built with


def make_model(*, enhancement: bool) -> DRSTA:
    torch.manual_seed(0)
    cfg = DRSTAConfig(
        backbone="resnet18", num_parts=2, num_frames=OWN_N, attn_hidden=8, enhancement=enhancement
    )
    return DRSTA(cfg, backbone=build_backbone("resnet18", pretrained=False))


def make_tracklet(length: int) -> Tracklet:
    """A tracklet of ``length`` crops, crop ``i`` filled with grey level ``10 * i`` (so frames differ)."""
    crops = np.stack([np.full((64, 32, 3), 10 * i, np.uint8) for i in range(length)])
    return Tracklet(
        camera_id="cam",
        track_id=1,
        chunk=0,
        first_frame=0,
        last_frame=length - 1,
        start_time=0.0,
        end_time=length / 10,
        num_frames=length,
        frame_indices=np.arange(length, dtype=np.int64),
        timestamps=np.arange(length, dtype=np.float64) / 10,
        boxes=np.tile(np.array([0, 0, 32, 64], np.float32), (length, 1)),
        scores=np.full(length, 0.9, np.float32),
        crops=crops,
    )


def make_encoder(model: DRSTA, num_frames: int | None, name: str = "test") -> TrackletEncoder:
    """An encoder on the CPU with the ``reid:`` section's picture defaults."""
    r = ReIDConfig()
    return TrackletEncoder(
        model,
        model_name=name,
        device="cpu",
        num_frames=num_frames,
        picture_crops=r.picture_crops,
        picture_quality=r.picture_quality,
        blur_heads=False,
    )


def frames_fed(encoder: TrackletEncoder, tracklet: Tracklet) -> tuple[int, np.ndarray]:
    """(frames the backbone received, embedding) for one tracklet, read with a forward hook."""
    seen: list[int] = []
    hook = encoder.model.backbone.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[0]))
    try:
        (emb,) = encoder.encode([tracklet])
    finally:
        hook.remove()
    return sum(seen), emb.embedding


@pytest.fixture(scope="module")
def model() -> DRSTA:
    return make_model(enhancement=False)


@pytest.mark.parametrize(("num_frames", "length"), [(1, 9), (3, 9), (OWN_N, 9), (7, 9), (6, 2), (5, 1)])
def test_num_frames_is_the_number_of_frames_fed(model: DRSTA, num_frames: int, length: int) -> None:
    encoder = make_encoder(model, ReIDConfig(num_frames=num_frames).num_frames)
    tracklet = make_tracklet(length)
    fed, embedding = frames_fed(encoder, tracklet)
    assert fed == num_frames
    # and they are the restricted random sample's test-time frames, in order
    idx = restricted_random_sample(length, num_frames, train=False)
    expected = model.embed(preprocess_crops(tracklet.crops[idx])[None]).embeddings[0].numpy()
    np.testing.assert_allclose(embedding, expected, atol=1e-6)


def test_left_out_it_is_the_networks_own_n(model: DRSTA) -> None:
    encoder = make_encoder(model, ReIDConfig().num_frames)
    assert encoder.num_frames == OWN_N
    assert frames_fed(encoder, make_tracklet(10))[0] == OWN_N


def test_changing_it_changes_the_embedding(model: DRSTA) -> None:
    tracklet = make_tracklet(12)
    a = make_encoder(model, 2).encode([tracklet])[0]
    b = make_encoder(model, 6).encode([tracklet])[0]
    assert not np.allclose(a.embedding, b.embedding)


def test_a_network_with_enhancement_only_takes_its_own_n() -> None:
    enhanced = make_model(enhancement=True)
    assert make_encoder(enhanced, OWN_N, "e").num_frames == OWN_N
    with pytest.raises(ValueError, match=r"reid\.num_frames: .*N=4 frames, got 6") as err:
        make_encoder(enhanced, 6, "e")
    assert "\n" not in str(err.value)
