"""Camera centering: per-camera means shrunk to a prior, and the matcher comparing without them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.matching.centering import CameraCentering, center_by_camera
from pipeline.matching.matcher import Matcher
from pipeline.matching.topology import Topology
from tests import matching_defaults as build
from tests.test_matcher import THRESHOLD, basis, tracklet

E = 8


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_mean_is_the_prior_shrunk_sum_and_centring_renormalises() -> None:
    prior = unit([1, 1, 0, 0, 0, 0, 0, 0]) * 0.5
    cc = CameraCentering(prior, prior_weight=2.0)
    x1, x2 = unit([3, 0, 4, 0, 0, 0, 0, 0]), unit([0, 0, 0, 1, 0, 0, 0, 0])
    assert cc.count("A") == 0 and np.allclose(cc.mean("A"), prior)
    # vectors are normalised before they are counted: 10 * x1 counts as x1
    cc.observe(["A", "A"], np.stack([10 * x1, x2]))
    want_mean = (2.0 * prior + x1 + x2) / 4.0
    assert cc.count("A") == 2 and np.allclose(cc.mean("A"), want_mean)
    assert np.allclose(cc.mean("B"), prior), "a camera never observed is centred with the prior"
    q = unit([1, 2, 3, 4, 5, 6, 7, 8])
    got = cc.center(["A", "B"], np.stack([q, q]))
    assert got.dtype == np.float32
    assert np.allclose(got[0], unit(q - want_mean), atol=1e-6)
    assert np.allclose(got[1], unit(q - prior), atol=1e-6)
    assert cc.count("A") == 2, "center() does not observe"


def test_a_vector_equal_to_its_camera_mean_stays_as_it_was() -> None:
    v = unit([0, 1, 0, 0, 0, 0, 0, 0])
    got = CameraCentering(v).center(["A"], v[None])
    assert np.allclose(got[0], v)


def test_center_by_camera_observes_the_whole_set_first() -> None:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((7, E))
    cams = ["A", "B", "A", "A", "B", "C", "A"]
    prior = rng.standard_normal(E) * 0.1
    got = center_by_camera(vecs, cams, prior, prior_weight=3.0)
    units = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for i, c in enumerate(cams):
        members = units[[j for j, d in enumerate(cams) if d == c]]
        mean = (3.0 * prior + members.sum(0)) / (3.0 + len(members))
        assert np.allclose(got[i], unit(units[i] - mean), atol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CameraCentering(np.zeros((2, E))), r"prior: expected a finite vector"),
        (lambda: CameraCentering(np.full(E, np.nan)), r"prior: expected a finite vector"),
        (lambda: CameraCentering(np.zeros(E), prior_weight=0), r"prior_weight: expected > 0"),
        (lambda: CameraCentering(np.zeros(E)).center(["A"], np.ones((1, 4))), r"expected 8 values"),
        (lambda: CameraCentering(np.zeros(E)).observe(["A", "B"], np.ones((1, E))), r"camera_ids: 2 for 1"),
    ],
)
def test_bad_input_is_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def _b(i: int) -> np.ndarray:
    """A person of camera B: its own direction plus B's colour cast along basis(2), twice as strong."""
    return unit(basis(i) + 2 * basis(2)).astype(np.float32)


def _run(centering: CameraCentering | None) -> list[int]:
    """Person 1 and person 2 in camera A at the same time; two other people in B one after the other; then
    person 1 in B. One batch each. Returns the identity ids given."""
    m = Matcher(build.gallery(), Topology(), threshold=THRESHOLD, centering=centering)
    ids = [
        a.identity_id
        for a in m.assign([tracklet("A", 1, basis(0), 0, 10), tracklet("A", 2, basis(1), 0, 10)])
    ]
    for track, (vec, start) in enumerate([(_b(3), 20), (_b(4), 40), (_b(0), 60)], start=3):
        [a] = m.assign([tracklet("B", track, vec, start, start + 10)])
        ids.append(a.identity_id)
    return ids


def test_centring_undoes_a_camera_cast_that_merges_strangers_and_splits_a_person() -> None:
    # As they come: B's two strangers have cosine 0.8 (the shared cast), above the threshold 0.6, so they are
    # merged; person 1 in B has cosine 1/sqrt(5) = 0.447 to itself in A, below it, and 0.8 to the strangers
    # (the cast again): it joins them.
    assert float(_b(3) @ _b(4)) == pytest.approx(0.8) and float(_b(0) @ basis(0)) == pytest.approx(0.2**0.5)
    assert _run(None) == [1, 2, 3, 3, 3]
    # Centred (prior 0, weight 1): the first B stranger meets an empty B mean (the prior) and stays as it is;
    # the second is compared as b4 - b3 / 2: cosine 0.3 / sqrt(0.45) = 0.447 to b3, a new person. Person 1 in B
    # is compared as b0 - (b3 + b4) / 3, cosine 3 / sqrt(15) = 0.775 to A's person 1 (stored as it came, A's
    # mean being the zero prior then): linked.
    b0c = unit(_b(0) - (_b(3) + _b(4)) / 3)
    assert float(b0c @ basis(0)) == pytest.approx(3 / 15**0.5)
    assert _run(CameraCentering(np.zeros(E), prior_weight=1.0)) == [1, 2, 3, 4, 1]


def test_the_matcher_centres_with_the_means_from_before_the_batch_then_observes_it() -> None:
    cc = CameraCentering(np.zeros(E), prior_weight=1.0)
    m = Matcher(build.gallery(), Topology(), threshold=THRESHOLD, centering=cc)
    m.assign([tracklet("B", 1, _b(3), 0, 10), tracklet("B", 2, _b(4), 0, 10)])
    # both were compared with the prior (their own batch is not in the mean yet) and then counted
    assert cc.count("B") == 2 and np.allclose(cc.mean("B"), (_b(3) + _b(4)) / 3, atol=1e-6)
    assert m.gallery.similarities(_b(3)[None].astype(np.float32))[1].max() == pytest.approx(1.0, abs=1e-6)


def test_a_prior_of_another_length_than_the_gallery_is_refused() -> None:
    g = build.gallery()
    build.matcher(g).assign([tracklet("A", 1, basis(0), 0, 10)])
    with pytest.raises(ValueError, match="centering: a prior of 4 values for a gallery of 8"):
        Matcher(g, Topology(), threshold=THRESHOLD, centering=CameraCentering(np.zeros(4)))


# ------------------------------------------------------------------ the threshold and prior a run uses


def _cfg(tmp_path, matcher: str, checkpoint: str | None = None):
    from pipeline.config import load_config

    reid = f'reid: {{checkpoint: "{checkpoint}"}}\n' if checkpoint else ""
    p = tmp_path / "cams.yaml"
    p.write_text(f"cameras:\n  - id: a\n    source: a.mp4\n{reid}matcher: {matcher}\n")
    return load_config(p)


def test_auto_uses_the_checkpoints_prior_and_centred_threshold(tmp_path) -> None:
    from models.checkpoint import DEFAULT_CHECKPOINT, checkpoint_centering, read_checkpoint
    from pipeline.runtime.compose import matching_threshold

    rec = checkpoint_centering(DEFAULT_CHECKPOINT)
    assert rec is not None, "the default checkpoint records a camera prior"
    raw = float(read_checkpoint(DEFAULT_CHECKPOINT)["meta"]["threshold"])
    t = matching_threshold(_cfg(tmp_path, "{}"))  # the default: auto
    assert t.prior is not None and np.array_equal(t.prior, rec.prior) and t.prior_weight == rec.prior_weight
    assert t.value == pytest.approx(rec.threshold) and t.value != pytest.approx(raw)
    assert "camera-centred" in t.source and t.centering.startswith("on")
    off = matching_threshold(_cfg(tmp_path, "{camera_centering: false}"))
    assert off.prior is None and off.value == pytest.approx(raw) and off.centering == "off"
    on = matching_threshold(_cfg(tmp_path, "{camera_centering: true}"))
    assert np.array_equal(on.prior, t.prior) and (on.value, on.source) == (t.value, t.source)
    assert matching_threshold(_cfg(tmp_path, "{camera_centering: auto}")) == t
    # a threshold set as a number is a raw cosine unless centring is demanded with it
    fixed = matching_threshold(_cfg(tmp_path, "{threshold: 0.3}"))
    assert fixed.value == 0.3 and fixed.prior is None and "set in the config" in fixed.source
    fixed = matching_threshold(_cfg(tmp_path, "{threshold: 0.3, camera_centering: true}"))
    assert fixed.value == 0.3 and np.array_equal(fixed.prior, rec.prior) and fixed.centering.startswith("on")


def test_a_checkpoint_without_a_prior_matches_as_before_unless_centring_is_demanded(tmp_path) -> None:
    from models.checkpoint import REPO_ROOT
    from pipeline.runtime.compose import matching_threshold

    old = REPO_ROOT / "models" / "checkpoints" / "drsta_osnet_x0_25_pku.pt"
    t = matching_threshold(_cfg(tmp_path, "{threshold: 0.5, camera_centering: auto}", str(old)))
    assert t.prior is None and t.value == 0.5 and t.centering == "off"
    with pytest.raises(
        ValueError, match=r"^matcher.camera_centering: true, but the checkpoint .* no camera prior"
    ):
        matching_threshold(_cfg(tmp_path, "{threshold: 0.5, camera_centering: true}", str(old)))
