"""Re-ID metrics: hand-worked CMC/AP cases, the cross-camera protocol, errors, and a brute-force check."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import ReIDMetrics, cosine_distance, evaluate_all_vs_other_cameras, evaluate_rank

# --- the hand-worked case ------------------------------------------------------------------------------
#
# gallery  g0      g1      g2      g3      g4
# pid      1       2       1       3       1
# camid    0       1       1       0       2
#
# Every query's distances rank the gallery in the order written in its row (smaller = closer).
#
# q0 (pid 1, cam 0): ranked g0 g1 g2 g3 g4. g0 is pid 1 in cam 0 -> discarded.
#    Kept list g1 g2 g3 g4 -> matches at positions 2 and 4.
#    first match rank 2; AP = (1/2 + 2/4) / 2 = 0.5
# q1 (pid 2, cam 0): ranked g1 g0 g2 g3 g4. Nothing discarded; the only match g1 is at position 1.
#    first match rank 1; AP = (1/1) / 1 = 1.0
# q2 (pid 3, cam 0): its only match g3 is in cam 0 -> discarded -> no true match left -> skipped.
#
# Valid queries: 2. CMC = [1/2, 2/2, 2/2, 2/2, 2/2]; rank1 = 0.5; rank5 = 1.0; rank10 and rank20 saturate
# at 1.0 (the gallery has 5 entries); mAP = (0.5 + 1.0) / 2 = 0.75.
HAND_G_PIDS = np.array([1, 2, 1, 3, 1])
HAND_G_CAMS = np.array([0, 1, 1, 0, 2])
HAND_Q_PIDS = np.array([1, 2, 3])
HAND_Q_CAMS = np.array([0, 0, 0])
HAND_DIST = np.array(
    [
        [0.1, 0.2, 0.3, 0.4, 0.5],
        [0.2, 0.1, 0.3, 0.4, 0.5],
        [0.5, 0.4, 0.3, 0.2, 0.1],
    ]
)


def test_hand_worked_case():
    m = evaluate_rank(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS)
    np.testing.assert_allclose(m.cmc, [0.5, 1.0, 1.0, 1.0, 1.0])
    assert m.num_query == 2
    assert m.rank1 == pytest.approx(0.5)
    assert m.rank5 == pytest.approx(1.0)
    assert m.rank10 == pytest.approx(1.0)
    assert m.rank20 == pytest.approx(1.0)
    assert m.mAP == pytest.approx(0.75)
    assert m.to_dict() == {
        "rank1": pytest.approx(0.5),
        "rank5": pytest.approx(1.0),
        "rank10": pytest.approx(1.0),
        "rank20": pytest.approx(1.0),
        "mAP": pytest.approx(0.75),
        "num_query": 2,
    }
    assert list(m.to_dict()) == ["rank1", "rank5", "rank10", "rank20", "mAP", "num_query"]


def test_hand_worked_case_query_alone():
    # q0 alone: CMC = [0, 1, 1, 1, 1]; AP = (1/2 + 2/4) / 2 = 0.5
    m = evaluate_rank(HAND_DIST[:1], HAND_Q_PIDS[:1], HAND_G_PIDS, HAND_Q_CAMS[:1], HAND_G_CAMS)
    np.testing.assert_allclose(m.cmc, [0.0, 1.0, 1.0, 1.0, 1.0])
    assert (m.rank1, m.mAP, m.num_query) == (pytest.approx(0.0), pytest.approx(0.5), 1)


@pytest.mark.parametrize(
    ("q_cam", "rank1", "ap"),
    [
        # Query pid 1 in cam 0, ranked g0 g1 g2 g3 g4 as in the hand case.
        # cam 0: g0 discarded; kept g1 g2 g3 g4; matches at 2, 4; AP = (1/2 + 2/4) / 2 = 0.5.
        (0, 0.0, 0.5),
        # cam 1: g2 (pid 1, cam 1) discarded instead; kept g0 g1 g3 g4; matches at 1, 4;
        #        AP = (1/1 + 2/4) / 2 = 0.75.
        (1, 1.0, 0.75),
        # cam 9: nothing discarded; matches at 1, 3, 5; AP = (1/1 + 2/3 + 3/5) / 3 = 34/45.
        (9, 1.0, 34 / 45),
    ],
)
def test_same_camera_discard_changes_the_answer(q_cam, rank1, ap):
    m = evaluate_rank(HAND_DIST[:1], [1], HAND_G_PIDS, [q_cam], HAND_G_CAMS)
    assert m.rank1 == pytest.approx(rank1)
    assert m.mAP == pytest.approx(ap)


@pytest.mark.parametrize(
    ("g_pids", "first_rank", "ap"),
    [
        # Query pid 1 in cam 0; gallery all in cam 1 and ranked in the written order.
        # Junk -1 ahead of the match is discarded: kept [1, 2]; match at 1; AP = 1.
        ([-1, 1, 2], 1, 1.0),
        # Distractor 0 is kept and never matches: kept [0, 1, 2]; match at 2; AP = 1/2.
        ([0, 1, 2], 2, 0.5),
        # Both: kept [0, 1]; match at 2; AP = 1/2.
        ([-1, 0, -1, 1], 2, 0.5),
        # Junk between two matches: kept [1, 2, 1]; matches at 1, 3; AP = (1/1 + 2/3) / 2 = 5/6.
        ([1, -1, 2, 1], 1, 5 / 6),
    ],
)
def test_junk_discarded_distractors_kept(g_pids, first_rank, ap):
    g = len(g_pids)
    dist = np.arange(g, dtype=float)[None, :]
    m = evaluate_rank(dist, [1], g_pids, [0], [1] * g)
    assert int(np.argmax(m.cmc > 0)) + 1 == first_rank
    assert m.mAP == pytest.approx(ap)


@pytest.mark.parametrize(("q_pid", "num_query"), [(-1, 1), (0, 1), (5, 2)])
def test_junk_and_distractor_queries_are_skipped(q_pid, num_query):
    # The first query (pid 5) always finds its match; the second has pid q_pid and a gallery entry with that
    # pid in another camera, so only a real identity (>= 1) counts as a query.
    m = evaluate_rank(np.zeros((2, 2)), [5, q_pid], [5, q_pid], [0, 0], [1, 1])
    assert m.num_query == num_query


@pytest.mark.parametrize(
    ("g_pids", "rank1"),
    [
        # All distances equal: the stable sort keeps gallery order, so the first entry is ranked first.
        ([2, 1], 0.0),
        ([1, 2], 1.0),
    ],
)
def test_ties_keep_gallery_order(g_pids, rank1):
    m = evaluate_rank(np.zeros((1, 2)), [1], g_pids, [0], [1, 1])
    assert m.rank1 == rank1


@pytest.mark.parametrize(
    ("dist", "q_pids", "g_pids", "q_cams", "g_cams"),
    [
        pytest.param(np.zeros((0, 0)), [], [], [], [], id="empty-both"),
        pytest.param(np.zeros((0, 3)), [], [1, 2, 3], [], [1, 1, 1], id="empty-query"),
        pytest.param(np.zeros((2, 0)), [1, 2], [], [0, 0], [], id="empty-gallery"),
        pytest.param(np.zeros((1, 2)), [1], [1, 1], [0], [0, 0], id="only-same-camera"),
        pytest.param(np.zeros((1, 2)), [1], [-1, 2], [0], [1, 1], id="only-junk-and-others"),
        pytest.param(np.zeros((1, 1)), [-1], [-1], [0], [1], id="junk-query"),
    ],
)
def test_no_valid_query_raises(dist, q_pids, g_pids, q_cams, g_cams):
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distmat": np.zeros(3)}, "distmat"),
        ({"q_pids": [1]}, "q_pids"),
        ({"g_pids": [1, 2]}, "g_pids"),
        ({"q_camids": [0, 0, 0]}, "q_camids"),
        ({"g_camids": [[1, 1, 1]]}, "g_camids"),
        ({"q_pids": [1.0, 2.0]}, "integer"),
        ({"distmat": np.full((2, 3), np.nan)}, "NaN"),
        ({"ranks": (0, 1)}, "ranks"),
    ],
)
def test_evaluate_rank_rejects_bad_input(kwargs, message):
    args = {
        "distmat": np.zeros((2, 3)),
        "q_pids": [1, 2],
        "g_pids": [1, 2, 3],
        "q_camids": [0, 0],
        "g_camids": [1, 1, 1],
    }
    args.update(kwargs)
    ranks = args.pop("ranks", (1, 5, 10, 20))
    with pytest.raises(ValueError, match=message):
        evaluate_rank(*args.values(), ranks=ranks)


def test_string_camera_ids():
    # Camera ids as the pipeline names them; same answer as the hand case with ints.
    cams = {0: "cam-a", 1: "cam-b", 2: "cam-c"}
    m = evaluate_rank(
        HAND_DIST,
        HAND_Q_PIDS,
        HAND_G_PIDS,
        [cams[c] for c in HAND_Q_CAMS],
        [cams[c] for c in HAND_G_CAMS],
    )
    assert (m.rank1, m.mAP, m.num_query) == (pytest.approx(0.5), pytest.approx(0.75), 2)


@pytest.mark.parametrize(
    ("ranks", "expected"),
    [
        ((1,), {"rank1": 0.5}),
        ((2, 50), {"rank2": 1.0, "rank50": 1.0}),  # 50 > G = 5 saturates
    ],
)
def test_custom_ranks_in_to_dict(ranks, expected):
    m = evaluate_rank(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS, ranks=ranks)
    d = m.to_dict()
    assert {k: d[k] for k in expected} == expected
    assert set(d) == set(expected) | {"mAP", "num_query"}


def _reference(dist, q_pids, g_pids, q_cams, g_cams):
    """Slow, obvious per-query loop of the same protocol."""
    first, aps = [], []
    for i in range(len(q_pids)):
        if q_pids[i] <= 0:
            continue
        hits = []
        for j in np.argsort(dist[i], kind="stable"):
            if g_pids[j] == -1 or (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]):
                continue
            hits.append(g_pids[j] == q_pids[i])
        if not any(hits):
            continue
        positions = [p + 1 for p, h in enumerate(hits) if h]
        first.append(positions[0])
        aps.append(np.mean([(n + 1) / p for n, p in enumerate(positions)]))
    cmc = np.array([np.mean([f <= k for f in first]) for k in range(1, dist.shape[1] + 1)])
    return cmc, float(np.mean(aps)), len(first)


@pytest.mark.parametrize(("num_q", "num_g"), [(1, 1), (7, 4), (300, 40)])  # 300 spans query blocks
def test_matches_brute_force_reference(num_q, num_g):
    rng = np.random.default_rng(num_q * 1000 + num_g)
    q_pids = rng.integers(-1, 6, num_q)
    g_pids = rng.integers(-1, 6, num_g)
    q_cams = rng.integers(0, 3, num_q)
    g_cams = rng.integers(0, 3, num_g)
    # Rounded distances make ties common, so the tie rule is exercised too.
    dist = np.round(rng.random((num_q, num_g)), 1)
    # Make sure there is at least one valid query: query 0 is pid 1 in cam 0, gallery 0 is pid 1 in cam 1.
    q_pids[0], q_cams[0], g_pids[0], g_cams[0] = 1, 0, 1, 1
    cmc, mean_ap, n = _reference(dist, q_pids, g_pids, q_cams, g_cams)
    m = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(m.cmc, cmc)
    assert m.mAP == pytest.approx(mean_ap)
    assert m.num_query == n


# --- cosine distance ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_q", "num_g", "dim"), [(0, 0, 3), (0, 4, 3), (3, 0, 3), (1, 1, 1), (5, 7, 16)])
def test_cosine_distance_matches_direct_computation(num_q, num_g, dim):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(num_q, dim)) * 3.0  # not normalised
    g = rng.normal(size=(num_g, dim))
    expected = np.array(
        [[1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in g] for a in q]
    ).reshape(num_q, num_g)
    d = cosine_distance(q, g)
    assert d.shape == (num_q, num_g)
    np.testing.assert_allclose(d, expected, atol=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 0.0], [5.0, 0.0], 0.0),  # same direction, different length
        ([1.0, 0.0], [0.0, 2.0], 1.0),  # orthogonal
        ([1.0, 1.0], [-3.0, -3.0], 2.0),  # opposite
        ([0.0, 0.0], [1.0, 2.0], 1.0),  # zero query
        ([1.0, 2.0], [0.0, 0.0], 1.0),  # zero gallery
        ([0.0, 0.0], [0.0, 0.0], 1.0),  # both zero: no NaN
    ],
)
def test_cosine_distance_special_vectors(a, b, expected):
    d = cosine_distance(np.array([a]), np.array([b]))
    assert np.isfinite(d).all()
    assert d[0, 0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("q_shape", "g_shape", "message"),
    [((3,), (2, 3), "query"), ((2, 3), (3,), "gallery"), ((2, 3), (2, 4), "gallery")],
)
def test_cosine_distance_rejects_bad_shapes(q_shape, g_shape, message):
    with pytest.raises(ValueError, match=message):
        cosine_distance(np.ones(q_shape), np.ones(g_shape))


# --- all tracklets against the other cameras -----------------------------------------------------------


def _unit(degrees: float) -> list[float]:
    r = np.deg2rad(degrees)
    return [float(np.cos(r)), float(np.sin(r))]


def test_all_vs_other_cameras_hand_worked():
    # Four tracklets as 2-D unit vectors; cosine distance grows with the angle between them.
    #   t0 pid 1 cam 0 at  0 deg
    #   t1 pid 1 cam 1 at 10 deg
    #   t2 pid 2 cam 0 at 25 deg
    #   t3 pid 2 cam 1 at 90 deg
    # Each query discards itself (same pid, same camera).
    #   t0: t1 (10) t2 (25) t3 (90)  -> match t1 at 1, AP 1
    #   t1: t0 (10) t2 (15) t3 (80)  -> match t0 at 1, AP 1
    #   t2: t1 (15) t0 (25) t3 (65)  -> match t3 at 3, AP 1/3
    #   t3: t2 (65) t1 (80) t0 (90)  -> match t2 at 1, AP 1
    # CMC = [3/4, 3/4, 1]; rank1 = 0.75; mAP = (1 + 1 + 1/3 + 1) / 4 = 5/6.
    # If a tracklet could find itself, every rank-1 would be 1.0.
    emb = np.array([_unit(0), _unit(10), _unit(25), _unit(90)])
    m = evaluate_all_vs_other_cameras(emb, [1, 1, 2, 2], [0, 1, 0, 1])
    np.testing.assert_allclose(m.cmc, [0.75, 0.75, 1.0, 1.0])
    assert m.rank1 == pytest.approx(0.75)
    assert m.mAP == pytest.approx(5 / 6)
    assert m.num_query == 4


def test_all_vs_other_cameras_same_camera_duplicates_do_not_count():
    # t0 and t1 are the same person in the same camera and identical: neither may find the other.
    # t2 (pid 1, cam 1) is the only cross-camera match. Queries t0, t1: gallery without {t0, t1} is
    # [t2 (pid 1, far), t3 (pid 2, near)] -> match at 2, AP 1/2. t2: t0, t1 are both matches; ranked
    # t3 (near), t0, t1 -> matches at 2, 3; AP (1/2 + 2/3) / 2 = 7/12. t3 (pid 2) has no other -> skipped.
    emb = np.array([_unit(0), _unit(0), _unit(60), _unit(30)])
    m = evaluate_all_vs_other_cameras(emb, [1, 1, 1, 2], [0, 0, 1, 1])
    assert m.num_query == 3
    assert m.rank1 == pytest.approx(0.0)
    assert m.mAP == pytest.approx((0.5 + 0.5 + 7 / 12) / 3)


@pytest.mark.parametrize(
    ("emb", "pids", "cams"),
    [
        pytest.param(np.zeros((0, 4)), [], [], id="empty"),
        pytest.param(np.ones((1, 4)), [1], [0], id="one-tracklet"),
        pytest.param(np.eye(3), [1, 2, 3], [0, 1, 2], id="nobody-in-two-cameras"),
    ],
)
def test_all_vs_other_cameras_without_valid_query_raises(emb, pids, cams):
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_all_vs_other_cameras(emb, pids, cams)


@pytest.mark.parametrize(
    ("emb", "pids", "cams", "message"),
    [
        (np.ones(4), [1], [0], "embeddings"),
        (np.ones((2, 4)), [1], [0, 1], "pids"),
        (np.ones((2, 4)), [1, 1], [0], "camids"),
    ],
)
def test_all_vs_other_cameras_rejects_bad_shapes(emb, pids, cams, message):
    with pytest.raises(ValueError, match=message):
        evaluate_all_vs_other_cameras(emb, pids, cams)


def test_metrics_is_frozen():
    m = evaluate_rank(HAND_DIST, HAND_Q_PIDS, HAND_G_PIDS, HAND_Q_CAMS, HAND_G_CAMS)
    assert isinstance(m, ReIDMetrics)
    with pytest.raises(AttributeError):
        m.rank1 = 1.0  # type: ignore[misc]
