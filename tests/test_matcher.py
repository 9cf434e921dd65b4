"""Matcher: topology gates, joint assignment, chunk continuity, bounded gallery, restore, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.matching.gallery import SavedTracklet
from pipeline.matching.matcher import Assignment, Matcher
from pipeline.matching.topology import Span, Topology
from pipeline.transport.messages import TrackletEmbedding
from tests import matching_defaults as build

E = 8
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
MODEL = "drsta-test"
THRESHOLD = build.THRESHOLD  # the cosines below are set around it (and assume it below 0.9)


def basis(i: int) -> np.ndarray:
    v = np.zeros(E, np.float32)
    v[i] = 1.0
    return v


def mix(cos: float, i: int = 0, j: int = 1) -> np.ndarray:
    """Unit vector with cosine ``cos`` to ``basis(i)`` (the rest along ``basis(j)``)."""
    v = np.zeros(E, np.float32)
    v[i], v[j] = cos, math.sqrt(1.0 - cos * cos)
    return v


def tracklet(
    cam: str, track: int, vec: np.ndarray, start: float, end: float, chunk: int = 0, model: str = MODEL
) -> TrackletEmbedding:
    return TrackletEmbedding(
        camera_id=cam,
        track_id=track,
        chunk=chunk,
        first_frame=0,
        last_frame=10,
        start_time=T0 + start,
        end_time=T0 + end,
        num_frames=11,
        embedding=vec,
        part_visibility=np.ones(6, np.float32),
        model=model,
    )


def seeded(topology: Topology, **gallery_kw) -> Matcher:
    """A matcher whose gallery holds identity 1: basis(0), seen in cam A from T0 to T0 + 10 s."""
    m = build.matcher(build.gallery(**gallery_kw), topology)
    [a] = m.assign([tracklet("A", 1, basis(0), 0, 10)])
    assert a == Assignment(("A", 1, 0), 1, None, True)
    return m


# ----------------------------------------------------------------------------------------------------
# Topology


LINKED = Topology({("A", "B"): (5.0, 60.0)}, [("A", "O")])


@pytest.mark.parametrize(
    ("topology", "cam_a", "end_a", "cam_b", "start_b", "expected"),
    [
        (LINKED, "A", 0, "A", 5, True),  # same camera, a gap
        (LINKED, "A", 0, "A", 0, True),  # same camera, touching
        (LINKED, "A", 0, "A", -1, False),  # same camera, B began before A ended
        (LINKED, "A", 0, "B", 5, True),  # transit == min
        (LINKED, "A", 0, "B", 60, True),  # transit == max
        (LINKED, "A", 0, "B", 4.9, False),
        (LINKED, "A", 0, "B", 60.1, False),
        (LINKED, "B", 0, "A", 30, True),  # links are undirected
        (LINKED, "A", 0, "O", -100, True),  # overlapping cameras: anything
        (LINKED, "O", 0, "A", 1e6, True),
        (LINKED, "A", 0, "C", 30, False),  # closed: not linked
        (Topology(), "A", 0, "C", 30, True),  # open: any non-negative transit
        (Topology(), "A", 0, "C", 0, True),
        (Topology(), "A", 0, "C", -1, False),
        (Topology({("A", "B"): (5, 60)}, default="open"), "A", 0, "C", 1e6, True),
        (Topology({("A", "B"): (5, 60)}, default="open"), "A", 0, "B", 1e6, False),  # links still bind
    ],
)
def test_can_follow(topology, cam_a, end_a, cam_b, start_b, expected):
    assert topology.can_follow(cam_a, T0 + end_a, cam_b, T0 + start_b) is expected


@pytest.mark.parametrize(
    ("links", "overlaps", "expected"),
    [({}, (), "open"), ({("A", "B"): (0, 1)}, (), "closed"), ({}, [("A", "B")], "closed")],
)
def test_topology_default_follows_whether_one_is_given(links, overlaps, expected):
    assert Topology(links, overlaps).default == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"links": {("A", "B"): (0, 1), ("B", "A"): (0, 2)}}, "given twice"),
        ({"links": {("A", "B"): (0, 1), frozenset({"A", "B"}): (0, 2)}}, "given twice"),
        ({"links": {("A", "A"): (0, 1)}}, "two distinct"),
        ({"links": {("A", "B", "C"): (0, 1)}}, "two distinct"),
        ({"links": {("A", "B"): (10, 1)}}, "min <= max"),
        ({"links": {("A", "B"): (-1, 1)}}, "min <= max"),
        ({"links": {("A", "B"): 5}}, "expected (min_transit_s"),
        ({"overlaps": [("A", "A")]}, "two distinct"),
        ({"default": "ajar"}, "default"),
    ],
)
def test_topology_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Topology(**kwargs)


CHAIN = Topology({("A", "B"): (10, 60), ("B", "C"): (5, 30)}, [("B", "B2")])


@pytest.mark.parametrize(
    ("history", "new", "expected"),
    [
        ([], ("C", 0, 10), True),  # nothing seen yet
        ([("A", 0, 10), ("B", 30, 40)], ("C", 50, 60), True),  # A -> B -> C: only B -> C is judged
        ([("A", 0, 10), ("B", 30, 40)], ("C", 100, 110), False),  # B -> C transit 60 > 30
        ([("A", 0, 10)], ("C", 50, 60), False),  # A -> C is not linked
        ([("A", 0, 10), ("B", 30, 40)], ("A", 5, 20), False),  # same camera at the same time
        ([("A", 0, 100)], ("B", 50, 60), False),  # two non-overlapping places at once
        ([("B", 0, 100)], ("B2", 50, 60), True),  # overlapping cameras at once
        ([("A", 0, 25), ("B2", 26, 40)], ("B", 30, 35), True),  # A -> B too quick, but B2 covers arrival
        ([("A", 0, 25)], ("B", 30, 35), False),  # ... without B2: A -> B transit 5 < 10
        ([("B", 0, 20), ("A", 30, 40)], ("C", 45, 50), False),  # came from A, not B: A -> C unlinked
        ([("B", 100, 110)], ("A", 0, 50), True),  # a late arrival: A -> B transit 50
        ([("B", 100, 110)], ("A", 0, 10), False),  # A -> B transit 90 > 60
        ([("A", 30, 34), ("B", 35, 60)], ("C", 0, 10), False),  # a late C went on to A (unlinked), not B
        ([("B", 30, 40), ("B2", 35, 45)], ("C", 60, 70), True),  # B -> C 20 ok (B2 -> C unlinked)
    ],
)
def test_allows_checks_overlap_everywhere_and_transit_to_neighbours(history, new, expected):
    spans = [Span(c, T0 + s, T0 + e) for c, s, e in history]
    cam, s, e = new
    assert CHAIN.allows(spans, cam, T0 + s, T0 + e) is expected


# ----------------------------------------------------------------------------------------------------
# Matcher decisions


def test_empty_batch_changes_nothing():
    m = build.matcher()
    assert m.assign([]) == []
    assert len(m.gallery) == 0 and m.gallery.next_id == 1


@pytest.mark.parametrize("next_id", [1, 42])
def test_empty_gallery_starts_a_new_identity(next_id):
    m = build.matcher(build.gallery(next_id=next_id))
    assert m.assign([tracklet("A", 7, basis(0), 0, 5)]) == [Assignment(("A", 7, 0), next_id, None, True)]
    assert m.gallery.next_id == next_id + 1
    assert m.gallery.ids.tolist() == [next_id]


@pytest.mark.parametrize(
    ("name", "topology", "cam", "start", "end", "cos", "matched"),
    [
        ("linked, within the window", LINKED, "B", 40, 50, 0.9, True),
        ("linked, too early", LINKED, "B", 12, 20, 0.9, False),
        ("linked, too late", LINKED, "B", 100, 110, 0.9, False),
        ("linked, below the threshold", LINKED, "B", 40, 50, THRESHOLD - 0.1, False),
        ("not linked, closed topology", LINKED, "C", 40, 50, 0.9, False),
        ("not linked, open topology", Topology(), "C", 4000, 4010, 0.9, True),
        ("same camera, later", LINKED, "A", 500, 510, 0.9, True),
        ("same camera, at the same time", LINKED, "A", 5, 15, 0.9, False),
        ("overlapping camera, at the same time", LINKED, "O", 2, 8, 0.9, True),
        ("similarity == threshold", Topology(), "C", 40, 50, THRESHOLD, True),
        ("similarity just below", Topology(), "C", 40, 50, THRESHOLD - 1e-4, False),
    ],
)
def test_match_or_new(name, topology, cam, start, end, cos, matched):
    m = seeded(topology)
    [a] = m.assign([tracklet(cam, 3, mix(cos), start, end)])
    if matched:
        assert a.identity_id == 1 and not a.is_new
        assert a.similarity == pytest.approx(cos, abs=1e-6)
    else:
        assert a == Assignment((cam, 3, 0), 2, None, True)


@pytest.mark.parametrize(("overlaps", "matched"), [((), False), ([("A", "B")], True)])
def test_no_two_places_at_once(overlaps, matched):
    """Seen in A 10:00-10:05; a look-alike in B 10:03-10:04 is someone else unless A and B overlap."""
    m = build.matcher(topology=Topology({("A", "B"): (0, 600)}, overlaps))
    m.assign([tracklet("A", 1, basis(0), 0, 300)])
    [a] = m.assign([tracklet("B", 1, basis(0), 180, 240)])
    assert (a.identity_id == 1) is matched


def test_no_two_places_at_once_holds_against_the_whole_history():
    """The best prototype comes from an old sighting; a newer sighting in another camera still blocks."""
    m = build.matcher()
    m.assign([tracklet("A", 1, basis(0), 0, 10)])
    m.assign([tracklet("A", 1, basis(2), 100, 400, chunk=1)])  # same track, a different look
    [a] = m.assign([tracklet("B", 5, basis(0), 200, 210)])
    assert a.identity_id == 2 and a.is_new


def test_joint_assignment_beats_greedy():
    """sims [[0.9, 0.8], [0.85, 0.1]]: greedy gives t0 -> A and leaves t1 alone; jointly t0 -> B, t1 -> A."""
    g = build.gallery()
    a = g.create(mix(0.9, 0, 2), "X", T0, T0 + 1)  # identity A: 0.9 to t0 ...
    g.add(a, mix(0.85, 1, 3), "X", T0 + 2, T0 + 3)  # ... and 0.85 to t1
    b = g.create(mix(0.8, 0, 4), "X", T0 + 4, T0 + 5)  # identity B: 0.8 to t0 ...
    g.add(b, mix(0.1, 1, 5), "X", T0 + 6, T0 + 7)  # ... and 0.1 to t1
    m = build.matcher(g, model=MODEL)
    t0, t1 = tracklet("Y", 1, basis(0), 100, 110), tracklet("Y", 2, basis(1), 100, 110)
    ids, sims = g.similarities(np.stack([t0.embedding, t1.embedding]))
    np.testing.assert_allclose(sims, [[0.9, 0.8], [0.85, 0.1]], atol=1e-6)
    out = m.assign([t0, t1])
    assert [(x.identity_id, x.is_new) for x in out] == [(b, False), (a, False)]
    assert [x.similarity for x in out] == pytest.approx([0.8, 0.85], abs=1e-6)


def test_one_identity_per_track_in_a_batch():
    """Two tracks that both look like identity 1: the closer one gets it, the other a new identity."""
    m = seeded(Topology())
    out = m.assign([tracklet("B", 1, mix(0.7), 50, 60), tracklet("C", 1, mix(0.95), 50, 60)])
    assert [(x.identity_id, x.is_new) for x in out] == [(2, True), (1, False)]


@pytest.mark.parametrize("others", [0, 1, 3])  # alone, and with tracks that match nothing in the same batch
def test_ties_go_to_the_lower_identity_id(others):
    g = build.gallery()
    first = g.create(basis(0), "X", T0, T0 + 1)
    second = g.create(basis(0), "X", T0 + 2, T0 + 3)
    m = build.matcher(g)
    batch = [tracklet("Y", 10 + k, basis(4 + k), 100, 110) for k in range(others)]
    out = m.assign([*batch, tracklet("Y", 1, basis(0), 100, 110)])
    assert (first, second) == (1, 2) and out[-1].identity_id == first
    assert [a.is_new for a in out] == [True] * others + [False]


# ----------------------------------------------------------------------------------------------------
# Chunk continuity


@pytest.mark.parametrize(
    ("name", "first", "second", "expected_id", "is_new"),
    [
        ("next chunk", tracklet("A", 1, basis(0), 0, 10), tracklet("A", 1, basis(3), 10, 20, 1), 1, False),
        ("after a gap", tracklet("A", 1, basis(0), 0, 10), tracklet("A", 1, basis(3), 60, 70, 4), 1, False),
        (
            "late arrival",
            tracklet("A", 1, basis(0), 0, 10, 1),
            tracklet("A", 1, basis(3), -20, -10),
            1,
            False,
        ),
        ("reused id", tracklet("A", 1, basis(0), 0, 10), tracklet("A", 1, basis(3), 900, 910), 2, True),
        (
            "out of order",
            tracklet("A", 1, basis(0), 0, 10, 2),
            tracklet("A", 1, basis(3), 20, 30, 1),
            2,
            True,
        ),
        ("other track", tracklet("A", 1, basis(0), 0, 10), tracklet("A", 9, basis(3), 10, 20, 1), 2, True),
    ],
)
def test_chunks_of_a_track_keep_their_identity(name, first, second, expected_id, is_new):
    """A dissimilar look (similarity 0) still continues the track; chunk/time disorder starts a new run."""
    m = build.matcher()
    m.assign([first])
    [a] = m.assign([second])
    assert (a.identity_id, a.is_new) == (expected_id, is_new)
    assert a.similarity == (None if is_new else pytest.approx(0.0, abs=1e-6))


def test_chunks_in_one_batch_share_an_identity_and_one_sighting():
    m = build.matcher()
    out = m.assign(
        [
            tracklet("A", 1, basis(0), 0, 10, chunk=0),
            tracklet("B", 4, basis(5), 0, 10, chunk=0),
            tracklet("A", 1, basis(3), 10, 20, chunk=1),
        ]
    )
    assert [(x.identity_id, x.is_new) for x in out] == [(1, True), (2, True), (1, True)]
    assert m.gallery.sightings(1) == [Span("A", T0, T0 + 20)]
    [c] = m.assign([tracklet("A", 1, basis(6), 20, 30, chunk=2)])
    assert c.identity_id == 1 and m.gallery.sightings(1) == [Span("A", T0, T0 + 30)]
    assert m.gallery.track_identity("A", 1) == 1


def test_a_continued_identity_is_not_given_to_another_track_of_the_batch():
    m = build.matcher()
    m.assign([tracklet("A", 1, basis(0), 0, 10)])
    out = m.assign([tracklet("B", 2, basis(0), 20, 30), tracklet("A", 1, basis(0), 10, 12, chunk=1)])
    assert [(x.identity_id, x.is_new) for x in out] == [(2, True), (1, False)]


# ----------------------------------------------------------------------------------------------------
# Determinism, bounds, restore, errors


def _stream(seed: int, n_people: int = 6, n_batches: int = 12) -> list[list[TrackletEmbedding]]:
    """People with their own directions, seen by cameras A..C at random times, 1-4 tracklets per batch."""
    rng = np.random.default_rng(seed)
    people = rng.normal(size=(n_people, E))
    batches, track, t = [], 0, 0.0
    for _ in range(n_batches):
        batch = []
        for _ in range(int(rng.integers(1, 5))):
            track += 1
            v = people[rng.integers(n_people)] + rng.normal(scale=0.25, size=E)
            start = t + float(rng.uniform(0, 30))
            batch.append(
                tracklet(str(rng.choice(list("ABC"))), track, v / np.linalg.norm(v), start, start + 5)
            )
        t += 40.0
        batches.append(batch)
    return batches


def test_same_input_gives_same_ids():
    runs = []
    for _ in range(2):
        m = build.matcher()
        runs.append([m.assign(b) for b in _stream(3)])
    assert runs[0] == runs[1]
    flat = [a for batch in runs[0] for a in batch]
    assert any(a.is_new for a in flat) and any(not a.is_new for a in flat)  # both paths were exercised


@pytest.mark.parametrize(("max_prototypes", "n_adds"), [(1, 0), (1, 5), (3, 2), (3, 20), (10, 40)])
def test_prototypes_are_bounded_unit_and_keep_outliers(max_prototypes, n_adds):
    rng = np.random.default_rng(0)
    g = build.gallery(max_prototypes=max_prototypes)
    i = g.create(basis(0), "A", T0, T0 + 1)
    if max_prototypes > 1:
        g.add(i, basis(7), "A", T0 + 2, T0 + 3)  # an outlying view
    for k in range(n_adds):
        v = basis(0) + rng.normal(scale=0.05, size=E)
        g.add(i, v, "A", T0 + 10 + k, T0 + 11 + k)
    p = g.prototypes(i)
    assert 1 <= len(p) <= max_prototypes
    assert len(p) == min(max_prototypes, 1 + (max_prototypes > 1) + n_adds)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    # merged prototypes are means of the noisy looks: closer to the true direction than any one look (~0.99)
    assert (p @ basis(0)).max() > (0.999 if n_adds >= 5 else 0.98)
    if max_prototypes > 1:
        assert (p @ basis(7)).max() > 0.999  # the merge rule collapsed near-duplicates, not the outlier


@pytest.mark.parametrize("max_sightings", [1, 3])
def test_sightings_are_bounded_to_the_latest(max_sightings):
    g = build.gallery(max_sightings=max_sightings)
    i = g.create(basis(0), "A", T0, T0 + 1)
    for k in range(1, 8):
        g.add(i, basis(0), "A", T0 + 10 * k, T0 + 10 * k + 1)
    assert g.sightings(i) == [Span("A", T0 + 10 * k, T0 + 10 * k + 1) for k in range(8 - max_sightings, 8)]


@pytest.mark.parametrize("n_identities", [0, 1, 50])
def test_similarities_equal_the_max_over_prototypes(n_identities):
    rng = np.random.default_rng(n_identities)
    g = build.gallery(max_prototypes=4)
    protos = {}
    for _ in range(n_identities):
        vs = rng.normal(size=(int(rng.integers(1, 7)), E))
        vs /= np.linalg.norm(vs, axis=1, keepdims=True)
        i = g.create(vs[0], "A", T0, T0 + 1)
        for v in vs[1:]:
            g.add(i, v, "A", T0, T0 + 1)
        protos[i] = g.prototypes(i)
    q = rng.normal(size=(5, E)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids, sims = g.similarities(q)
    assert sims.shape == (5, n_identities) and ids.tolist() == sorted(protos)
    expected = np.array([[(protos[i] @ x).max() for i in ids] for x in q]).reshape(5, n_identities)
    np.testing.assert_allclose(sims, expected, atol=1e-6)


def test_restore_rebuilds_identities_and_resumes_ids():
    rows = [
        SavedTracklet(7, "B", T0 + 50, T0 + 60, basis(1) * 2.0),  # stored vectors are renormalised
        SavedTracklet(3, "A", T0, T0 + 10, basis(0)),
        SavedTracklet(7, "B", T0 + 70, T0 + 80, basis(2)),
    ]
    g = build.restored(rows, model=MODEL)
    assert g.ids.tolist() == [3, 7] and g.next_id == 8 and g.model == MODEL
    np.testing.assert_allclose(g.prototypes(7), np.stack([basis(1), basis(2)]))
    assert g.sightings(7) == [Span("B", T0 + 50, T0 + 60), Span("B", T0 + 70, T0 + 80)]
    m = build.matcher(g)
    out = m.assign([tracklet("C", 1, mix(0.9, 2, 4), 200, 210), tracklet("C", 2, basis(5), 200, 210)])
    assert [(x.identity_id, x.is_new) for x in out] == [(7, False), (8, True)]


@pytest.mark.parametrize(
    ("rows", "next_id", "expected_next"),
    [([], 1, 1), ([], 5, 5), ([SavedTracklet(2, "A", 0, 1, np.array([1.0, 0.0]))], 9, 9)],
)
def test_restore_next_id(rows, next_id, expected_next):
    g = build.restored(rows, next_id=next_id)
    assert len(g) == len(rows) and g.next_id == expected_next


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ((1, "A", 0, 1, [1.0, 0.0]), "expected a SavedTracklet, got tuple"),
        (SavedTracklet("x", "A", 0, 1, np.array([1.0, 0.0])), "identity_id must be an integer"),
        (SavedTracklet(1, 5, 0, 1, np.array([1.0, 0.0])), "camera_id must be a string"),
        (SavedTracklet(1, "A", 2, 1, np.array([1.0, 0.0])), "start <= end"),
        (SavedTracklet(1, "A", 0, 1, np.array([0.0, 0.0])), "non-zero"),
        (SavedTracklet(1, "A", 0, 1, np.array([1.0, 0.0]), track_id=3), "go together"),
        (SavedTracklet(1, "A", 0, 1, np.array([1.0, 0.0]), track_id="x", chunk=0, run="r"), "integers"),
    ],
)
def test_restore_rejects_bad_rows(row, message):
    good = SavedTracklet(1, "A", 0, 1, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=rf"rows\[1\][:.].*{message}"):
        build.restored([good, row])


@pytest.mark.parametrize(
    ("gallery_model", "batch_models"),
    [("m1", ["m2"]), ("m1", ["m1", "m2"]), (None, ["m1", "m2"])],
)
def test_other_models_are_rejected_before_any_change(gallery_model, batch_models):
    m = build.matcher(model=gallery_model)
    batch = [tracklet("A", k, basis(k), 0, 1, model=name) for k, name in enumerate(batch_models)]
    with pytest.raises(ValueError, match="model"):
        m.assign(batch)
    assert len(m.gallery) == 0 and m.gallery.model == gallery_model


def test_matcher_model_must_agree_with_the_gallery():
    with pytest.raises(ValueError, match="model"):
        build.matcher(build.gallery(model="m1"), model="m2")


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([tracklet("A", 1, basis(0), 0, 1), tracklet("A", 1, basis(1), 0, 1)], "appears twice"),
        ([tracklet("A", 1, np.ones(4, np.float32) / 2, 0, 1)], "shape"),
    ],
)
def test_bad_batches_are_rejected(batch, message):
    m = seeded(Topology())
    with pytest.raises(ValueError, match=message):
        m.assign(batch)
    assert len(m.gallery) == 1


@pytest.mark.parametrize("threshold", [-1.5, 1.01, float("nan")])
def test_threshold_must_be_a_cosine(threshold):
    with pytest.raises(ValueError, match="threshold"):
        build.matcher(threshold=threshold)


def test_the_worked_example_of_docs_matcher_md():
    """docs/matcher.md section 9, number for number. Each tracklet gets its own direction u; an identity
    holds, per tracklet, a prototype at the wanted cosine to u (and orthogonal to everything else)."""
    dim = 40

    def e(i: int) -> np.ndarray:
        v = np.zeros(dim, np.float32)
        v[i] = 1.0
        return v

    u = {name: e(i) for i, name in enumerate(["t0", "t1", "t3", "t4"])}
    wanted = {"t0": (0.90, 0.80), "t1": (0.85, 0.10), "t3": (0.70, 0.0), "t4": (0.50, 0.78)}
    where = {1: ("gate", 0, 20), 2: ("hall", -60, 30)}
    rows, free = [], 10
    for ident, (cam, a, b) in where.items():
        for name, sims in wanted.items():
            if sims[ident - 1] > 0:
                s = sims[ident - 1]
                rows.append(
                    SavedTracklet(ident, cam, T0 + a, T0 + b, s * u[name] + math.sqrt(1 - s * s) * e(free))
                )
                free += 1
    m = Matcher(
        build.restored(rows),
        Topology({("gate", "hall"): (10, 120)}, [("hall", "hall2")]),
        threshold=0.6,  # the example's own threshold, whatever the config's default
    )
    assert m.topology.default == "closed"
    [a3] = m.assign([tracklet("gate", 3, e(30), 40, 58)])
    assert a3.identity_id == 3
    t2 = (0.31 * e(30) + math.sqrt(1 - 0.31**2) * e(31)).astype(np.float32)
    out = m.assign(
        [
            tracklet("hall", 4, u["t0"], 50, 70),
            tracklet("hall", 9, u["t1"], 52, 68),
            tracklet("gate", 3, t2, 58, 70, chunk=1),
            tracklet("hall2", 12, u["t3"], 60, 66),
            tracklet("hall", 4, u["t4"], 70, 80, chunk=1),
        ]
    )
    assert [(a.key, a.identity_id, a.is_new) for a in out] == [
        (("hall", 4, 0), 2, False),
        (("hall", 9, 0), 1, False),
        (("gate", 3, 1), 3, False),
        (("hall2", 12, 0), 4, True),
        (("hall", 4, 1), 2, False),
    ]
    assert [a.similarity for a in out] == [
        pytest.approx(0.80, abs=1e-6),
        pytest.approx(0.85, abs=1e-6),
        pytest.approx(0.31, abs=1e-6),
        None,
        pytest.approx(0.78, abs=1e-6),
    ]
    assert Span("hall", T0 + 50, T0 + 80) in m.gallery.sightings(2)
    assert m.gallery.sightings(3) == [Span("gate", T0 + 40, T0 + 70)]


def test_closing_time_groups_let_later_tracklets_of_one_batch_link_to_earlier_ones():
    v = np.zeros(8, np.float32)
    v[0] = 1.0

    def emb(cam, track, start, end):
        return TrackletEmbedding(cam, track, 0, 0, 1, start, end, 2, v, np.ones(2), "m")

    batch = [emb("b", 2, 20.0, 30.0), emb("a", 1, 0.0, 10.0)]  # arrival order differs from closing order
    m = build.matcher(threshold=0.5, model="m")
    joint = m.assign([emb("x", 9, 0.0, 1.0), emb("y", 9, 5.0, 6.0)])
    assert joint[0].identity_id != joint[1].identity_id  # one joint batch: both new, never linked
    m2 = build.matcher(threshold=0.5, model="m")
    a = m2.assign_by_closing_time(batch, window_s=build.DEFAULTS.window_s)
    assert a[1].is_new and a[1].identity_id == 1  # "a" closed first
    assert not a[0].is_new and a[0].identity_id == 1 and a[0].similarity == pytest.approx(1.0)
    assert m2.assign_by_closing_time([], window_s=build.DEFAULTS.window_s) == []


# ----------------------------------------------------------------------------------------------------
# Dropping identities (a forgotten or pruned person)


def _decided(batches: list[list[TrackletEmbedding]]) -> tuple[Matcher, list[SavedTracklet]]:
    """A matcher that decided ``batches`` and the rows a store would hold of it."""
    m = build.matcher(model=MODEL)
    rows = []
    for batch in batches:
        for t, a in zip(batch, m.assign(batch), strict=True):
            rows.append(
                SavedTracklet(
                    a.identity_id, t.camera_id, t.start_time, t.end_time, t.embedding, t.track_id, 0, "r"
                )
            )
    return m, rows


@pytest.mark.parametrize("drop", [[], [2], [1, 3], [999], "all"])
def test_a_dropped_identity_is_gone_and_the_gallery_decides_as_one_restored_without_it(drop):
    batches = _stream(5)
    live, rows = _decided(batches[:8])
    ids = sorted({r.identity_id for r in rows})
    assert len(ids) >= 4
    drop = ids if drop == "all" else drop
    next_id = live.gallery.next_id
    assert live.gallery.drop(drop) == sorted(set(drop) & set(ids))
    assert live.gallery.drop(drop) == []  # idempotent
    kept = [r for r in rows if r.identity_id not in drop]
    restored = build.matcher(build.restored(kept, next_id=next_id, model=MODEL), model=MODEL)
    g, h = live.gallery, restored.gallery
    assert g.ids.tolist() == h.ids.tolist() == [i for i in ids if i not in drop]
    assert len(g) == len(h) and all(i not in g for i in drop) and g.next_id == next_id
    for i in g.ids.tolist():
        np.testing.assert_array_equal(g.prototypes(i), h.prototypes(i))
        assert g.sightings(i) == h.sightings(i)
    queries = np.random.default_rng(1).normal(size=(5, E)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_array_equal(g.similarities(queries)[1], h.similarities(queries)[1])
    for r in rows:  # a track that led to a dropped identity is forgotten too (track ids are unique here)
        expected = None if r.identity_id in drop else r.identity_id
        assert (
            g.track_identity(r.camera_id, r.track_id) == h.track_identity(r.camera_id, r.track_id) == expected
        )
    later = [live.assign(b) for b in batches[8:]]
    assert later == [restored.assign(b) for b in batches[8:]]
    assert all(a.identity_id not in drop for batch in later for a in batch)
    assert all(a.identity_id >= next_id for batch in later for a in batch if a.is_new)


def test_the_next_chunk_of_a_dropped_identitys_track_gets_a_new_id():
    m = build.matcher(model=MODEL)
    [a] = m.assign([tracklet("A", 1, basis(0), 0, 10)])
    [b] = m.assign([tracklet("B", 2, basis(1), 0, 10)])
    assert m.gallery.drop([a.identity_id]) == [1]
    [c] = m.assign([tracklet("A", 1, basis(0), 20, 30, chunk=1)])  # same person, same track, next chunk
    assert c.is_new and c.identity_id == 3 and m.gallery.track_identity("A", 1) == 3
    assert m.gallery.ids.tolist() == [2, 3]


def test_dropping_from_an_empty_gallery_changes_nothing():
    g = build.gallery()
    assert g.drop([]) == [] and g.drop([1]) == []
    assert len(g) == 0 and g.next_id == 1 and g.latest_end is None
