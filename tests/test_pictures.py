"""A tracklet's pictures (pipeline/reid/pictures.py and the re-ID worker that sends them): the best crops are
the frames the temporal attention weighted most, in rank order, each crop once; the attention picture is the
best crop then one panel per part with that part's spatial attention over it; every JPEG decodes to the size
it states; making pictures never changes an embedding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from common.config_loader import ConfigError
from models.backbones import preprocess_crops
from models.checkpoint import DEFAULT_CHECKPOINT, load_drsta
from models.drsta import DRSTA
from models.sampling import restricted_random_sample
from pipeline.config import ReIDConfig
from pipeline.reid.pictures import (
    LABEL_HEIGHT,
    attention_strip,
    best_crops,
    heat_for_display,
    peak_over_uniform,
    tracklet_pictures,
)
from pipeline.reid.worker import TrackletEncoder
from pipeline.transport.messages import Tracklet, TrackletPicture

H, W = 256, 128  # crop size the camera workers send


def decode(p: TrackletPicture) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(p.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, f"{p.kind} {p.rank}: JPEG does not decode"
    assert (img.shape[1], img.shape[0]) == (p.width, p.height), f"{p.kind} {p.rank}: stated size differs"
    return img


def close_to(img: np.ndarray, crop: np.ndarray) -> bool:
    """A JPEG-decoded picture shows this crop (mean absolute difference of a few grey levels)."""
    return img.shape == crop.shape and float(np.abs(img.astype(np.float32) - crop).mean()) < 4.0


# ----------------------------------------------------------------------------------------------------
# The pure functions, with synthetic attention whose answer is known by construction


@pytest.mark.parametrize(
    ("sampled", "scores", "num_crops", "expected"),
    [
        # distinct crops: ranked by score
        ([0, 1, 2, 3], [0.1, 0.4, 0.2, 0.3], 3, [(1, 1), (3, 3), (2, 2)]),
        # more asked than sampled: all of them
        ([0, 1, 2, 3], [0.1, 0.4, 0.2, 0.3], 9, [(1, 1), (3, 3), (2, 2), (0, 0)]),
        # a short tracklet repeats crops: each once, at its best position
        ([0, 0, 1, 1, 2, 2], [0.2, 0.3, 0.05, 0.05, 0.25, 0.15], 3, [(1, 0), (4, 2), (2, 1)]),
        # one crop sampled N times: one picture
        ([0, 0, 0, 0], [0.1, 0.4, 0.2, 0.3], 3, [(1, 0)]),
        # uniform attention (the average-pooling baseline): the earlier samples
        ([0, 2, 4, 6], [0.25, 0.25, 0.25, 0.25], 2, [(0, 0), (1, 2)]),
        # no pictures asked
        ([0, 1, 2, 3], [0.1, 0.4, 0.2, 0.3], 0, []),
    ],
)
def test_best_crops_by_temporal_attention(sampled, scores, num_crops, expected) -> None:
    # K = 2 parts whose mean is the score: part 0 gets 2*score*f, part 1 2*score*(1-f), f varying by frame
    s = np.asarray(scores)
    f = np.linspace(0.2, 0.8, len(s))
    temporal = np.stack([2 * s * f, 2 * s * (1 - f)], axis=1)  # (N, 2)
    assert best_crops(np.asarray(sampled), temporal, num_crops) == expected


def test_the_score_is_the_mean_over_parts_not_one_part() -> None:
    # frame 0 wins on part 0 alone, frame 1 on the mean over parts
    temporal = np.array([[0.9, 0.0, 0.0], [0.1, 0.5, 0.5]])
    assert best_crops(np.array([0, 1]), temporal, 1) == [(1, 1)]


def grey_crops(t: int) -> np.ndarray:
    return np.stack([np.full((H, W, 3), 40 + 20 * i, np.uint8) for i in range(t)])


def one_hot_spatial(n: int, cells: list[tuple[int, int]], grid: tuple[int, int]) -> np.ndarray:
    """(N, K, L): part k of every frame looks only at grid cell ``cells[k]``."""
    h, w = grid
    s = np.zeros((n, len(cells), h, w), np.float32)
    for k, (r, c) in enumerate(cells):
        s[:, k, r, c] = 1.0
    return s.reshape(n, len(cells), h * w)  # (N, K, h, w) -> (N, K, L)


def test_attention_picture_puts_each_parts_heat_where_it_looked() -> None:
    grid = (8, 4)  # 32x32 pixels per cell on a 256x128 crop
    cells = [(0, 0), (7, 3), (3, 2)]
    crop = np.full((H, W, 3), 128, np.uint8)
    strip = attention_strip(crop, one_hot_spatial(1, cells, grid)[0].reshape(len(cells), *grid))
    assert strip.shape == (H + LABEL_HEIGHT, (1 + len(cells)) * W, 3)
    assert np.array_equal(strip[:H, :W], crop)  # the plain crop first
    for k, (r, c) in enumerate(cells):
        panel = strip[:, (1 + k) * W : (2 + k) * W].astype(int)  # BGR
        hot = panel[r * 32 + 16, c * 32 + 16]
        far_r, far_c = (7 - r) * 32 + 16, (3 - c) * 32 + 16
        cold = panel[far_r, far_c]
        assert hot[2] > hot[0] + 40, f"part {k}: the cell it looked at is not red: {hot}"
        assert cold[0] > cold[2] + 40, f"part {k}: the farthest cell is not blue: {cold}"


def heat_contrast(panel: np.ndarray, crop: np.ndarray) -> float:
    """How much the heatmap colour varies over a panel: the jet colour is recovered from the 50 % blend
    (panel - crop / 2) * 2, and its red minus blue spans -255 (blue) .. 255 (red); returns the spread
    between its 5th and 95th percentile (0 = one colour everywhere, about 510 = blue to red)."""
    heat = (panel.astype(np.float32) - 0.5 * crop.astype(np.float32)) / 0.5
    red_minus_blue = heat[..., 2] - heat[..., 0]  # BGR
    return float(np.percentile(red_minus_blue, 95) - np.percentile(red_minus_blue, 5))


def text_pixels(band: np.ndarray) -> int:
    """White-ish pixels in a label band (the band itself is dark grey)."""
    return int((band.min(axis=2) > 150).sum())


@pytest.mark.parametrize(
    ("heat", "expected"),
    [
        (np.full((8, 4), 1 / 32), 1.0),  # uniform
        (one_hot_spatial(1, [(2, 1)], (8, 4))[0, 0].reshape(8, 4), 32.0),  # all on one cell of 32
        (np.array([[1.0, 3.0]]), 1.5),  # not normalised: peak over the mean
        (np.zeros((8, 4)), float("nan")),  # no attention at all
    ],
)
def test_peak_over_uniform(heat: np.ndarray, expected: float) -> None:
    np.testing.assert_allclose(peak_over_uniform(heat), expected)


@pytest.mark.parametrize(
    ("relative_noise", "flat"),
    [
        (0.0, True),  # exactly uniform
        (1e-7, True),  # float32 rounding of a softmax over equal logits
        (1e-6, True),
        (2e-3, False),  # the default checkpoint's maps are this far from uniform, and are drawn
    ],
)
def test_a_uniform_map_is_drawn_flat_not_amplified_noise(relative_noise: float, flat: bool) -> None:
    rng = np.random.default_rng(1)
    heat = (np.full((16, 8), 1 / 128) * (1 + relative_noise * rng.standard_normal((16, 8)))).astype(
        np.float32
    )
    crop = np.full((H, W, 3), 128, np.uint8)
    strip = attention_strip(crop, heat[None])
    panel = strip[:H, W:]
    assert (not heat_for_display(heat).any()) == flat
    if flat:
        assert heat_contrast(panel, crop) < 3.0, "a uniform map was stretched into colours"
        assert np.ptp(panel.reshape(-1, 3), axis=0).max() <= 1  # one colour
    else:
        assert heat_contrast(panel, crop) > 300


def test_a_few_outlying_cells_do_not_flatten_the_rest() -> None:
    # the default checkpoint's maps: two border cells 7 % low, the rest within 0.3 % of each other, with
    # a structure (here: the left half higher) that min-max scaling would paint in one colour
    heat = np.full((16, 8), 1.0, np.float32)
    heat[:, :4] += 0.002
    heat[0, 0] = heat[0, 7] = 0.93
    crop = np.full((H, W, 3), 128, np.uint8)
    panel = attention_strip(crop, heat[None])[:H, W:].astype(int)  # BGR
    left, right = panel[8 * 16, 1 * 16], panel[8 * 16, 6 * 16]  # row 8, columns 1 and 6 of the grid
    assert left[2] > left[0] + 40, f"the higher half is not red: {left}"
    assert right[0] > right[2] + 40, f"the lower half is not blue: {right}"


def test_tracklet_pictures_synthetic() -> None:
    crops = grey_crops(5)
    frames = np.array([10, 13, 16, 19, 22])
    sampled = np.array([0, 1, 2, 3, 4])
    temporal = np.array([[0.1, 0.1], [0.1, 0.1], [0.4, 0.4], [0.3, 0.3], [0.1, 0.1]])
    grid = (8, 4)
    spatial = one_hot_spatial(5, [(0, 0), (7, 3)], grid)
    pics = tracklet_pictures(
        crops, frames, sampled, temporal, spatial, grid, num_crops=2, quality=90, blur_heads=False
    )
    assert [(p.kind, p.rank, p.frame_index) for p in pics] == [
        ("crop", 0, 16),
        ("crop", 1, 19),
        ("attention", 0, 16),
    ]
    assert close_to(decode(pics[0]), crops[2]) and close_to(decode(pics[1]), crops[3])
    att = decode(pics[2])
    assert (pics[2].width, pics[2].height) == (3 * W, H + LABEL_HEIGHT)
    assert close_to(att[:H, :W], crops[2])
    assert (
        tracklet_pictures(
            crops, frames, sampled, temporal, spatial, grid, num_crops=0, quality=90, blur_heads=False
        )
        == ()
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
        ({"num_crops": -1}, "num_crops"),
        ({"crops": np.zeros((0, H, W, 3), np.uint8)}, "crops"),
        ({"crops": np.zeros((5, H, W), np.uint8)}, "crops"),
        ({"frame_indices": np.arange(4)}, "frame_indices"),
        ({"sampled": np.array([0, 1, 2, 3, 5])}, "sampled"),
        ({"temporal": np.full((4, 2), 0.25)}, "temporal"),
        ({"spatial": np.full((5, 2, 31), 1 / 31)}, "spatial"),
        ({"grid": (4, 4)}, "spatial"),
    ],
)
def test_tracklet_pictures_refuses_what_does_not_fit(change: dict, match: str) -> None:
    args = {
        "crops": grey_crops(5),
        "frame_indices": np.arange(5),
        "sampled": np.arange(5),
        "temporal": np.full((5, 2), 0.2),
        "spatial": np.full((5, 2, 32), 1 / 32),
        "grid": (8, 4),
        "num_crops": 3,
        "quality": 85,
        "blur_heads": False,
    } | change
    with pytest.raises(ValueError, match=match):
        tracklet_pictures(**args)


# ----------------------------------------------------------------------------------------------------
# The config keys


def test_config_defaults() -> None:
    assert (ReIDConfig().picture_crops, ReIDConfig().picture_quality) == (3, 85)
    assert ReIDConfig(picture_crops=0, picture_quality=1).picture_crops == 0
    assert ReIDConfig(picture_quality=100).picture_quality == 100


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"picture_crops": -1}, "picture_crops"),
        ({"picture_quality": 0}, "picture_quality"),
        ({"picture_quality": 101}, "picture_quality"),
    ],
)
def test_config_refuses(kw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        ReIDConfig(**kw)
    assert key in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------
# The worker, with the real default network on real crops


@pytest.fixture(scope="module")
def model() -> DRSTA:
    return load_drsta(DEFAULT_CHECKPOINT, backbone_weights=None, device="cpu")


def encoder(model: DRSTA, picture_crops: int = 3, picture_quality: int = 85) -> TrackletEncoder:
    return TrackletEncoder(
        model,
        model_name="default@test",
        device="cpu",
        num_frames=None,
        picture_crops=picture_crops,
        picture_quality=picture_quality,
        blur_heads=False,
    )


def pku_tracklet(root: Path, pid: str = "007", cam: str = "01", count: int = 8) -> Tracklet:
    """PKU-Reid person ``pid``'s ``cam`` images 1..count resized to 256x128, as frames 100, 103, ...; the
    per-frame boxes cover every frame of the span."""
    crops = np.stack(
        [cv2.resize(cv2.imread(str(root / pid / f"{cam}_{k}.png")), (W, H)) for k in range(1, count + 1)]
    )  # (T, 256, 128, 3) BGR
    frames = 100 + 3 * np.arange(count, dtype=np.int64)
    track_frames = np.arange(frames[0], frames[-1] + 1, dtype=np.int64)
    x = track_frames.astype(np.float32)
    return Tracklet(
        camera_id="cam" + cam,
        track_id=7,
        chunk=0,
        first_frame=int(frames[0]),
        last_frame=int(frames[-1]),
        start_time=10.0,
        end_time=10.0 + 0.3 * (count - 1),
        num_frames=int(track_frames.size),
        frame_indices=frames,
        timestamps=10.0 + 0.3 * np.arange(count),
        boxes=np.tile(np.array([10, 20, 70, 180], np.float32), (count, 1)),
        scores=np.full(count, 0.9, np.float32),
        crops=crops,
        track_frames=track_frames,
        track_boxes=np.stack([x, x + 1, x + 60, x + 160], axis=1),
    )


def reference(model: DRSTA, t: Tracklet):
    """What the network says about the tracklet, run here directly: sampled crops and its output."""
    idx = restricted_random_sample(len(t), model.num_frames, train=False)
    return idx, model.embed(preprocess_crops(t.crops[idx])[None])


def test_crops_are_the_frames_with_most_temporal_attention(model: DRSTA, pku_root: Path) -> None:
    t = pku_tracklet(pku_root)
    (e,) = encoder(model).encode([t])
    idx, out = reference(model, t)
    score = out.temporal_attention[0].mean(dim=1).numpy()  # (N,)
    assert len(set(idx.tolist())) == len(idx)  # 8 crops, N = 6: no repeats, the plain ranking applies
    want = [int(idx[p]) for p in np.argsort(-score)[:3]]
    crops = [p for p in e.pictures if p.kind == "crop"]
    assert [p.rank for p in crops] == [0, 1, 2]
    assert [p.frame_index for p in crops] == [int(t.frame_indices[c]) for c in want]
    for p, c in zip(crops, want, strict=True):
        assert (p.width, p.height) == (W, H)
        assert close_to(decode(p), t.crops[c])
    (att,) = [p for p in e.pictures if p.kind == "attention"]
    k = out.spatial_attention.shape[2]
    assert (att.rank, att.frame_index) == (0, crops[0].frame_index)
    assert (att.width, att.height) == ((1 + k) * W, H + LABEL_HEIGHT)
    img = decode(att)
    assert close_to(img[:H, :W], t.crops[want[0]])
    assert not close_to(img[:H, W : 2 * W], t.crops[want[0]])  # a heatmap is over the first part's panel
    assert np.array_equal(e.track_frames, t.track_frames)
    assert np.array_equal(e.track_boxes, t.track_boxes)


@pytest.mark.parametrize(("pid", "cam"), [("007", "01"), ("008", "02"), ("010", "01")])
def test_the_default_checkpoints_attention_picture_shows_contrast_and_says_how_flat(
    model: DRSTA, pku_root: Path, pid: str, cam: str
) -> None:
    # The default checkpoint's maps are within a few per mille of uniform; scaled from their min, two
    # padded border cells took the whole colour range and the rest was one red (contrast about 20 here).
    t = pku_tracklet(pku_root, pid, cam)
    (e,) = encoder(model).encode([t])
    (att,) = [p for p in e.pictures if p.kind == "attention"]
    img = decode(att)
    crop = img[:H, :W]
    k = att.width // W - 1
    _, out = reference(model, t)
    ratios = [peak_over_uniform(m) for m in out.spatial_attention[0, 0].numpy()]  # (K, L) of one frame
    assert all(1.0 < r < 1.1 for r in ratios), f"not the nearly uniform maps this test is about: {ratios}"
    for part in range(k):
        panel = img[:H, (1 + part) * W : (2 + part) * W]
        assert heat_contrast(panel, crop) > 100, f"part {part + 1}: the heatmap is one colour"
        band = img[H:, (1 + part) * W : (2 + part) * W]
        assert np.median(band) < 60, f"part {part + 1}: no dark label band under the panel"
        assert text_pixels(band) > 40, f"part {part + 1}: no label written under the panel"


def test_making_pictures_does_not_change_the_embedding(model: DRSTA, pku_root: Path) -> None:
    t = pku_tracklet(pku_root, "008", "02")
    with_pictures = encoder(model, 3).encode([t])[0]
    without = encoder(model, 0).encode([t])[0]
    assert with_pictures.pictures and without.pictures == ()
    assert np.array_equal(with_pictures.embedding, without.embedding)
    assert np.array_equal(with_pictures.embedding, reference(model, t)[1].embeddings[0].numpy())


@pytest.mark.parametrize(
    ("count", "num_crops", "crops_expected"), [(1, 3, 1), (2, 3, 2), (8, 1, 1), (8, 5, 5)]
)
def test_short_tracklets_give_each_crop_once(model: DRSTA, pku_root: Path, count, num_crops, crops_expected):
    t = pku_tracklet(pku_root, "010", "01", count=count)
    (e,) = encoder(model, num_crops).encode([t])
    crops = [p for p in e.pictures if p.kind == "crop"]
    assert len(crops) == crops_expected
    assert len({p.frame_index for p in crops}) == crops_expected
    assert [p.kind for p in e.pictures].count("attention") == 1


def test_quality_is_the_jpeg_quality(model: DRSTA, pku_root: Path) -> None:
    t = pku_tracklet(pku_root)
    low, high = (encoder(model, 1, q).encode([t])[0].pictures for q in (10, 95))
    assert [len(p.jpeg) < len(q.jpeg) for p, q in zip(low, high, strict=True)] == [True, True]


def test_blur_heads_blurs_the_head_of_stored_pictures_only() -> None:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)  # noise: blurring is plain to see
    frames, sampled = np.arange(3), np.arange(3)
    temporal = np.array([[0.5, 0.5], [0.3, 0.3], [0.2, 0.2]])
    grid = (8, 4)
    spatial = np.full((3, 2, 32), 1 / 32)
    before = crops.copy()
    args = (crops, frames, sampled, temporal, spatial, grid)
    plain = tracklet_pictures(*args, num_crops=1, quality=100, blur_heads=False)
    blurred = tracklet_pictures(*args, num_crops=1, quality=100, blur_heads=True)
    head = H // 5
    a, b = decode(plain[0]).astype(np.float32), decode(blurred[0]).astype(np.float32)
    assert b[:head].var() < 0.2 * a[:head].var()  # the head band lost its detail
    assert np.abs(a[head + 8 :] - b[head + 8 :]).mean() < 2.0  # the rest is the same picture (JPEG aside)
    assert np.array_equal(crops, before)  # the caller's crops (what the embedding sees) are untouched
