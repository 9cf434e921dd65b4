"""DRSTA equations against independent small computations, and the network's contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.backbones import build_backbone
from models.drsta import DRSTA, AvgPoolReID, DRSTAConfig
from models.losses import OIMLoss, SoftmaxLoss, diversity_hellinger, diversity_penalty, diversity_sparse

H, W = 128, 64  # small input: resnet18 gives a 4x2 grid (L = 8)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("resnet18", pretrained=False).eval()


def make(backbone, **kw) -> DRSTA:
    torch.manual_seed(1)
    cfg = DRSTAConfig(backbone="resnet18", **{"num_parts": 3, "num_frames": 4, "attn_hidden": 16, **kw})
    return DRSTA(cfg, backbone=backbone)


def frames(b=2, n=4) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(b, n, 3, H, W)


def test_shapes_and_normalisation(backbone):
    model = make(backbone)
    out = model.embed(frames())
    assert out.embeddings.shape == (2, 128)
    assert out.spatial_attention.shape == (2, 4, 3, 8)
    assert out.temporal_attention.shape == (2, 4, 3)
    assert out.grid_size == (4, 2)
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out.spatial_attention.sum(-1), torch.ones(2, 4, 3))  # Eq. 2 over L
    torch.testing.assert_close(out.temporal_attention.sum(1), torch.ones(2, 3))  # Eq. 12 over N


def test_spatial_attention_matches_equations_1_to_3(backbone):
    model = make(backbone)
    sa = model.spatial
    f = torch.randn(5, 8, backbone.out_channels)  # (M, L, D)
    x, s = sa(f)
    d = sa.hidden
    for m in range(5):
        for k in range(3):
            wk = sa.w1.weight[k * d : (k + 1) * d]  # W_{s,k}
            bk = sa.w1.bias[k * d : (k + 1) * d]
            e = torch.stack([sa.w2[k] @ torch.relu(wk @ f[m, l] + bk) + sa.b2[k] for l in range(8)])  # Eq. 1
            s_ref = torch.exp(e) / torch.exp(e).sum()  # Eq. 2
            x_ref = sum(s_ref[l] * f[m, l] for l in range(8))  # Eq. 3
            torch.testing.assert_close(s[m, k], s_ref, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(x[m, k], x_ref, rtol=1e-4, atol=1e-5)


def test_enhancement_matches_supplementary_equations(backbone):
    model = make(backbone)
    enh = model.enhance
    torch.nn.init.normal_(enh.fcn.weight, std=0.01)
    torch.nn.init.normal_(enh.psi_w)
    x = torch.randn(2, 4, 3, backbone.out_channels)  # (B, N, K, D)
    out, c = enh(x)
    torch.testing.assert_close(c.sum(-1), torch.ones(2, 3, 4))  # row softmax (Eq. S3)
    for b in range(2):
        for k in range(3):
            xk = x[b, :, k].T  # X_k: (D, N)
            phi = xk.T @ xk * enh.scale  # Eq. S1 (scaled)
            ij = torch.arange(4.0)
            psi = enh.psi_w * torch.exp(-(ij[:, None] - ij[None, :]).abs() / 1.0) + enh.psi_b  # Eq. S2
            ck = torch.softmax(phi + psi, dim=1)  # Eq. S3
            for i in range(4):
                pooled = sum(ck[i, j] * xk[:, j] for j in range(4))
                ref = enh.fcn(pooled) + xk[:, i]  # Eq. S4
                torch.testing.assert_close(out[b, i, k], ref, rtol=1e-4, atol=1e-5)


def test_temporal_attention_matches_equations_11_to_13(backbone):
    model = make(backbone)
    ta = model.temporal
    torch.nn.init.normal_(ta.w, std=0.1)
    x = torch.randn(2, 4, 3, backbone.out_channels)
    pooled, t = ta(x)
    for b in range(2):
        for k in range(3):
            e = torch.stack([ta.w[k] @ x[b, n, k] + ta.b[k] for n in range(4)])  # Eq. 11
            t_ref = torch.softmax(e, 0)  # Eq. 12 (softmax over N)
            torch.testing.assert_close(t[b, :, k], t_ref, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(
                pooled[b, k], sum(t_ref[n] * x[b, n, k] for n in range(4)), rtol=1e-4, atol=1e-5
            )


def test_gradients_reach_every_attention_parameter(backbone):
    model = make(backbone)
    torch.nn.init.normal_(model.enhance.fcn.weight, std=0.01)  # at init the residual FCN is 0: no grad to Ψ
    model.train()
    out = model(frames())
    loss = out.embeddings[:, 0].sum() + diversity_hellinger(out.spatial_attention)
    loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone."):
            continue
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, f"no gradient reached {name}"


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"temporal_pooling": "avg"},
        {"temporal_pooling": "max"},
        {"enhancement": False},
        {"num_parts": 1},
        {"num_parts": 1, "spatial_attention": False, "enhancement": False, "temporal_pooling": "avg"},
        {"embed_dim": 32},
    ],
)
def test_ablation_variants_build_and_embed(backbone, kw):
    model = make(backbone, **kw)
    out = model.embed(frames())
    assert out.embeddings.shape == (2, kw.get("embed_dim", 128))
    torch.testing.assert_close(out.embeddings.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out.temporal_attention.sum(1), torch.ones(2, model.cfg.num_parts))


def test_one_frame_tracklet_and_embed_keeps_mode(backbone):
    model = make(backbone, num_frames=1)
    model.train()
    out = model.embed(frames(b=1, n=1))
    assert model.training  # embed restored the mode
    assert out.embeddings.shape == (1, 128)
    torch.testing.assert_close(out.temporal_attention, torch.ones(1, 1, 3))


def test_embed_is_deterministic_and_mode_independent(backbone):
    model = make(backbone, dropout=0.5)
    x = frames()
    a = model.embed(x).embeddings
    model.train()
    b = model.embed(x).embeddings
    torch.testing.assert_close(a, b)


def test_bad_input_shape_is_explained(backbone):
    model = make(backbone)
    with pytest.raises(ValueError, match=r"expected \(B, N, 3, H, W\)"):
        model(torch.randn(4, 3, H, W))


def test_avgpool_baseline_is_mean_of_frame_means(backbone):
    net = AvgPoolReID(backbone, num_frames=4).eval()
    x = frames()
    emb = net.embed(x).embeddings
    with torch.no_grad():
        grid = backbone(x.flatten(0, 1))
    ref = F.normalize(grid.mean(dim=(2, 3)).view(2, 4, -1).mean(1), dim=1)
    torch.testing.assert_close(emb, ref)


# ----------------------------------------------------------------------------------------- regularisers


def one_hot_rows(cells: list[int], length: int = 8) -> torch.Tensor:
    s = torch.zeros(len(cells), length)
    s[torch.arange(len(cells)), torch.tensor(cells)] = 1.0
    return s


@pytest.mark.parametrize("fn", [diversity_hellinger, diversity_sparse])
@pytest.mark.parametrize("k", [1, 2, 6])
def test_q_is_zero_for_disjoint_one_hot_and_k_k_minus_1_for_identical(fn, k):
    disjoint = one_hot_rows(list(range(k)))
    identical = one_hot_rows([3] * k)
    assert fn(disjoint).item() == pytest.approx(0.0, abs=1e-5)
    assert fn(identical).item() == pytest.approx(k * (k - 1), rel=1e-5)


def test_hellinger_and_sparse_differ_on_spread_attention():
    # two identical uniform receptive fields: Hellinger sees full overlap, S S^T only 1/L overlap
    s = torch.full((2, 8), 1 / 8)
    assert diversity_hellinger(s).item() == pytest.approx(2.0, rel=1e-5)
    # S S^T = 1/8 everywhere: (1/8 - 1)^2 * 2 + (1/8)^2 * 2
    assert diversity_sparse(s).item() == pytest.approx(2 * (7 / 8) ** 2 + 2 * (1 / 8) ** 2, rel=1e-5)


def test_regulariser_is_averaged_per_frame():
    frames_ = torch.stack([one_hot_rows([0, 0]), one_hot_rows([0, 1])])  # Q = 2 and 0
    assert diversity_hellinger(frames_).item() == pytest.approx(1.0, rel=1e-5)
    assert diversity_penalty("none", frames_).item() == 0.0
    with pytest.raises(KeyError, match="hellinger"):
        diversity_penalty("kl", frames_)


# ----------------------------------------------------------------------------------------- OIM / softmax


def test_oim_table_update_with_momentum_and_renormalisation():
    oim = OIMLoss(4, 3, queue_size=2, momentum=0.5, temperature=0.1)
    oim.lut[1] = F.normalize(torch.tensor([1.0, 0, 0, 0]), dim=0)
    x = F.normalize(torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), dim=1)
    targets = torch.tensor([1, -1, 2])
    oim.train()
    loss = oim(x, targets)
    assert torch.isfinite(loss)
    expected = F.normalize(0.5 * torch.tensor([1.0, 0, 0, 0]) + 0.5 * x[0], dim=0)
    torch.testing.assert_close(oim.lut[1], expected)
    torch.testing.assert_close(oim.lut[2], x[2])  # from zero: normalize(0.5 * x) = x
    torch.testing.assert_close(oim.lut[0], torch.zeros(4))  # untouched
    torch.testing.assert_close(oim.queue[0], x[1])  # the unlabelled sample entered the queue
    assert int(oim.queue_ptr) == 1


def test_oim_logits_and_loss_value():
    oim = OIMLoss(2, 2, momentum=0.5, temperature=0.5).eval()
    oim.lut.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[1.0, 0.0]])
    loss = oim(x, torch.tensor([0]))
    ref = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    torch.testing.assert_close(oim.lut, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # eval: no update


def test_oim_all_unlabelled_batch_is_zero_loss():
    oim = OIMLoss(4, 3, queue_size=4)
    assert oim(F.normalize(torch.randn(2, 4), dim=1), torch.tensor([-1, -1])).item() == 0.0


def test_softmax_loss_decreases_with_training():
    torch.manual_seed(0)
    loss_fn = SoftmaxLoss(8, 3)
    x = F.normalize(torch.randn(6, 8), dim=1)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    first = loss_fn(x, y).item()
    for _ in range(50):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5


# ---------------------------------------------------------------------------------------------------------
# start="own": the untrained head is the honest baseline (the backbone's own embedding mean-pooled)


@pytest.mark.parametrize(
    ("name", "embed_dim", "frames_per_tracklet"),
    [("resnet18", 512, 4), ("resnet18", 512, 1), ("osnet_x0_25", 512, 4), ("openvino_0277", 256, 4)],
)
def test_untrained_own_head_equals_the_own_embedding_baseline(name, embed_dim, frames_per_tracklet) -> None:
    from models.backbones import OPENVINO_MODELS
    from tests.conftest import shared_path

    if name == "openvino_0277":
        shared_path(OPENVINO_MODELS[name])
        net = build_backbone(name)
    elif name == "osnet_x0_25":
        shared_path("assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth")
        net = build_backbone(name)
    else:
        net = build_backbone(name, pretrained=False).eval()
    torch.manual_seed(3)
    cfg = DRSTAConfig(
        backbone=name, num_parts=3, num_frames=4, attn_hidden=16, embed_dim=embed_dim, start="own"
    )
    model = DRSTA(cfg, backbone=net)
    base = AvgPoolReID(net, num_frames=4, pool="embedding")
    x = torch.randn(2, frames_per_tracklet, 3, 256, 128).repeat_interleave(4 // frames_per_tracklet, dim=1)
    got, want = model.embed(x), base.embed(x)
    assert torch.allclose(got.embeddings, want.embeddings, atol=1e-5)
    cells = got.spatial_attention.shape[-1]  # uniform attention at the start
    assert torch.allclose(got.spatial_attention, torch.full_like(got.spatial_attention, 1 / cells))
    # and training moves it: the head is not frozen at the baseline
    assert any(p.requires_grad for p in model.head_parameters())


def test_own_head_is_trainable_and_leaves_the_baseline(backbone) -> None:
    model = make(backbone, start="own", embed_dim=512)
    x = frames()
    before = model.embed(x).embeddings
    opt = torch.optim.SGD(model.head_parameters(), lr=0.5)
    out = model(x)
    (out.embeddings[:, 0].sum() + diversity_hellinger(out.spatial_attention)).backward()
    opt.step()
    assert not torch.allclose(model.embed(x).embeddings, before)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"start": "own", "embed_dim": 128}, "embed_dim"),
        ({"start": "own", "bn_neck": True}, "bn_neck"),
        ({"start": "nope"}, "start"),
    ],
)
def test_own_start_config_errors(backbone, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        make(backbone, **kw)


@pytest.mark.parametrize("count", [0, 3])
def test_preprocess_follows_the_backbones_input_size(backbone, count) -> None:
    import numpy as np

    from models.backbones import preprocess_crops

    crops = np.random.default_rng(0).integers(0, 255, (count, 90, 40, 3), dtype=np.uint8)
    model = make(backbone)
    assert torch.equal(model.preprocess(crops), preprocess_crops(crops, size=(256, 128)))
    backbone.input_size = (128, 64)  # a backbone that wants another size: callers need no change
    try:
        assert model.preprocess(crops).shape == (count, 3, 128, 64)
    finally:
        del backbone.input_size
