"""The matcher's ordered intake: identities do not depend on arrival order, batching or a restart.

A synthetic three-camera scene is published as a camera worker would publish it (tracklets numbered in closing
order, each with its watermark, a progress marker every second, a final marker). The scene is chosen so that
deciding in arrival order gives different identities for different arrival orders; through the intake, every
arrival order and batching gives the same identities, also when the matcher "crashes" half-way and resumes
from what it saved (gallery rows + ``match_progress``) with the unacknowledged messages redelivered.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.matching.gallery import SavedTracklet
from pipeline.matching.ordering import Held, OrderedIntake, StreamState
from pipeline.transport.messages import Order, Progress, TrackletEmbedding
from tests import matching_defaults as build

T0 = 1_700_000_000.0
MODEL = "test-model"
DIM = 32
THRESHOLD = build.THRESHOLD  # the scene puts cross-person similarities near it
SESSION = "run-1"
CLOSE_DELAY_S = 0.7  # a track closes this long after it was last seen (the tracklet builder's max_gap)


@dataclass(frozen=True)
class Msg:
    id: str
    item: TrackletEmbedding | Progress
    session: str = SESSION


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scene(seed: int = 3, cameras=("A", "B", "C"), people: int = 5, per_camera: int = 14) -> list[Msg]:
    """Messages of three cameras over 60 s, in publication order per camera (cameras interleaved by time)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((people, DIM))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    # people share a common component, so cross-person similarities sit near the threshold and the order in
    # which tracklets are decided changes which identity a borderline one joins
    common = rng.standard_normal(DIM)
    common /= np.linalg.norm(common)
    timed: list[tuple[float, int, Msg]] = []
    for c, cam in enumerate(cameras):
        rows = []
        for track in range(per_camera):
            start = float(rng.uniform(0, 55))
            end = start + float(rng.uniform(0.5, 5.0))
            person = int(rng.integers(people))
            v = 0.55 * base[person] + 0.6 * common + 0.35 * rng.standard_normal(DIM) / np.sqrt(DIM)
            rows.append((end + CLOSE_DELAY_S, track + 1, start, end, v / np.linalg.norm(v)))
        rows.sort()
        ends = [r[3] for r in rows]
        for seq, (close, track, start, end, v) in enumerate(rows):
            wm = min([close, *ends[seq + 1 :]])
            e = TrackletEmbedding(
                camera_id=cam,
                track_id=track,
                chunk=0,
                first_frame=int(start * 10),
                last_frame=int(end * 10),
                start_time=T0 + start,
                end_time=T0 + end,
                num_frames=int((end - start) * 10) + 1,
                embedding=v.astype(np.float32),
                part_visibility=np.ones(4, np.float32),
                model=MODEL,
                order=Order(seq, T0 + wm, T0 + close),
            )
            timed.append((close, c, Msg(f"{cam}-t{seq}", e)))
        closes = [r[0] for r in rows]
        n = 0
        for t in range(0, 62):
            published = sum(1 for x in closes if x <= t)
            wm = min([float(t), *ends[published:]])
            p = Progress(cam, published - 1, T0 + wm, n, published_at=T0 + t)
            timed.append((t + 1e-6, c, Msg(f"{cam}-m{n}", p)))
            n += 1
        final = Progress(cam, len(rows) - 1, T0 + 62.0, n, final=True, published_at=T0 + 62)
        timed.append((62.5, c, Msg(f"{cam}-m{n}", final)))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [m for _, _, m in timed]


def saved(identity_id: int, h: Held) -> SavedTracklet:
    """What SQL keeps of a decided embedding (the gallery row a restarting matcher reads)."""
    e = h.embedding
    return SavedTracklet(
        identity_id,
        e.camera_id,
        e.start_time,
        e.end_time,
        e.embedding,
        int(e.track_id),
        int(e.chunk),
        h.session,
    )


def decide(
    arrivals: list[Msg], *, batch: int, crash_after: int | None = None, rng: random.Random | None = None
) -> dict[tuple, int]:
    """Feed ``arrivals`` to an intake ``batch`` messages at a time, deciding what it releases; optionally
    crash after ``crash_after`` messages: rebuild from the saved rows and progress, redeliver the
    unacknowledged messages (shuffled) before the rest. Returns tracklet key -> identity id."""
    clock = Clock()
    saved_rows: list[SavedTracklet] = []  # what SQL would hold: gallery rows with track info
    saved_progress: dict[tuple[str, str], StreamState] = {}
    decided: dict[tuple, int] = {}
    acked: set[str] = set()

    def fresh():
        intake = build.intake(clock=clock)
        intake.load(saved_progress.values())
        return build.matcher(build.restored(saved_rows, model=MODEL), model=MODEL), intake

    matcher, intake = fresh()

    def commit():
        r = intake.release()
        for bucket in r.buckets:
            batch_e = [h.embedding for h in bucket]
            for h, a in zip(bucket, matcher.assign(batch_e), strict=True):
                decided[(h.session, *h.embedding.key)] = a.identity_id
                saved_rows.append(saved(a.identity_id, h))
        assert not r.unordered
        for p in r.progress:
            saved_progress[(p.session, p.camera_id)] = p
        acked.update(r.ack)

    queue = list(arrivals)
    delivered: list[Msg] = []
    i = 0
    while i < len(queue):
        if crash_after is not None and len(delivered) >= crash_after:
            crash_after = None
            pending = [m for m in delivered if m.id not in acked]
            (rng or random.Random(0)).shuffle(pending)
            matcher, intake = fresh()
            queue = pending + queue[i:]
            delivered, i = [], 0
            continue
        for m in queue[i : i + batch]:
            delivered.append(m)
            intake.offer(m.id, m.item, m.session)
        i += batch
        commit()
    commit()
    assert intake.holding == 0
    return decided


def shuffled(msgs: list[Msg], seed: int) -> list[Msg]:
    out = list(msgs)
    random.Random(seed).shuffle(out)
    return out


def jittered(msgs: list[Msg], seed: int, spread: int = 12) -> list[Msg]:
    """Publication order disturbed locally, as queue batches and several re-ID workers do."""
    rng = random.Random(seed)
    keyed = [(i + rng.uniform(0, spread), m) for i, m in enumerate(msgs)]
    return [m for _, m in sorted(keyed, key=lambda x: x[0])]


def unordered_decisions(arrivals: list[Msg], batch: int) -> dict[tuple, int]:
    """Decide in arrival order, batch by batch (what the matcher did before the intake)."""
    matcher = build.matcher(model=MODEL)
    emb = [m for m in arrivals if isinstance(m.item, TrackletEmbedding)]
    out = {}
    for k in range(0, len(emb), batch):
        chunk = [m.item for m in emb[k : k + batch]]
        for m, a in zip(
            emb[k : k + batch],
            matcher.assign_by_closing_time(chunk, window_s=build.DEFAULTS.window_s),
            strict=True,
        ):
            out[(m.session, *m.item.key)] = a.identity_id
    return out


def partition(decided: dict[tuple, int]) -> set[frozenset]:
    groups: dict[int, set] = {}
    for key, identity in decided.items():
        groups.setdefault(identity, set()).add(key)
    return {frozenset(g) for g in groups.values()}


# ----------------------------------------------------------------------------------------------------


def test_the_scene_is_order_sensitive_without_the_intake():
    """Without ordering, two arrival orders of the same messages give different identities (so the tests
    below can fail)."""
    msgs = scene()
    results = {frozenset(partition(unordered_decisions(jittered(msgs, s), batch=4))) for s in range(6)}
    assert len(results) > 1


def test_identities_do_not_depend_on_arrival_order_or_batching():
    msgs = scene()
    reference = decide(msgs, batch=len(msgs))  # everything at once
    n_tracklets = sum(isinstance(m.item, TrackletEmbedding) for m in msgs)
    assert len(reference) == n_tracklets
    assert 1 < len(set(reference.values())) < n_tracklets  # some tracklets were linked, not all
    for seed, batch in [(1, 1), (2, 3), (3, 7), (4, 32)]:
        assert decide(jittered(msgs, seed), batch=batch) == reference, (seed, batch)
        assert decide(shuffled(msgs, seed), batch=batch) == reference, (seed, batch)


@pytest.mark.parametrize("crash_after", [5, 40, 90, 150])
def test_a_crash_and_restart_from_saved_state_gives_the_same_identities(crash_after: int):
    msgs = scene()
    reference = decide(msgs, batch=len(msgs))
    got = decide(
        jittered(msgs, crash_after), batch=5, crash_after=crash_after, rng=random.Random(crash_after)
    )
    assert got == reference


def test_the_restored_gallery_equals_the_live_one():
    """Prototypes, sightings and the track map come back from the rows as the live matcher had them."""
    msgs = scene()
    clock = Clock()
    intake = build.intake(clock=clock)
    matcher = build.matcher(model=MODEL)
    rows = []
    for m in msgs:
        intake.offer(m.id, m.item, m.session)
    for bucket in intake.release().buckets:
        for h, a in zip(bucket, matcher.assign([h.embedding for h in bucket]), strict=True):
            rows.append(saved(a.identity_id, h))
    live = matcher.gallery
    restored = build.restored(list(reversed(rows)), model=MODEL)
    assert list(restored.ids) == list(live.ids)
    for identity in live.ids:
        np.testing.assert_array_equal(restored.prototypes(int(identity)), live.prototypes(int(identity)))
        assert restored.sightings(int(identity)) == live.sightings(int(identity))
    for key in {
        (e.camera_id, int(e.track_id)) for e in (m.item for m in msgs) if isinstance(e, TrackletEmbedding)
    }:
        assert restored.track_identity(*key) == live.track_identity(*key)


# ----------------------------------------------------------------------------------------------------
# Waiting, and giving up waiting


def _emb(cam: str, seq: int, end: float, wm: float, track: int | None = None) -> TrackletEmbedding:
    v = np.zeros(DIM, np.float32)
    v[seq % DIM] = 1.0
    return TrackletEmbedding(
        camera_id=cam,
        track_id=track if track is not None else seq + 1,
        chunk=0,
        first_frame=0,
        last_frame=1,
        start_time=T0 + end - 1,
        end_time=T0 + end,
        num_frames=2,
        embedding=v,
        part_visibility=np.ones(2, np.float32),
        model=MODEL,
        order=Order(seq, T0 + wm, T0 + end),
    )


def released_keys(intake: OrderedIntake) -> list[tuple]:
    return [h.embedding.key for b in intake.release().buckets for h in b]


def test_a_gap_holds_the_stream_back_until_it_fills():
    clock = Clock()
    intake = build.intake(clock=clock)
    intake.offer("a1", _emb("A", 1, end=5, wm=9), SESSION)  # seq 0 has not arrived
    intake.offer("mA", Progress("A", 1, T0 + 20, 0), SESSION)  # nor can this marker apply
    assert released_keys(intake) == []
    assert intake.holding == 1
    intake.offer("a0", _emb("A", 0, end=3, wm=4), SESSION)
    assert released_keys(intake) == [("A", 1, 0), ("A", 2, 0)]  # the only stream, and its marker is at 20


def test_buckets_are_released_only_when_every_camera_has_passed_them():
    clock = Clock()
    intake = build.intake(clock=clock)
    intake.offer("mB", Progress("B", -1, T0 + 2.5, 0), SESSION)  # B has published nothing, up to 2.5 s
    intake.offer("a0", _emb("A", 0, end=1.2, wm=4), SESSION)
    intake.offer("a1", _emb("A", 1, end=3.5, wm=6), SESSION)
    assert released_keys(intake) == [("A", 1, 0)]  # bucket [1, 2) is done; [3, 4) waits for B
    intake.offer("mB2", Progress("B", -1, T0 + 4.0, 1), SESSION)
    assert released_keys(intake) == [("A", 2, 0)]


def test_a_gap_that_never_fills_is_skipped_after_max_wait(caplog):
    clock = Clock()
    intake = build.intake(clock=clock, max_wait_s=10)
    intake.offer("a1", _emb("A", 1, end=5, wm=9), SESSION)
    clock.now = 9.0
    assert released_keys(intake) == []
    clock.now = 10.5
    with caplog.at_level(logging.WARNING):
        assert released_keys(intake) == [("A", 2, 0)]
    assert intake.skipped == 1
    assert "never reached the matcher" in caplog.text and "camera A" in caplog.text


def test_an_idle_or_silent_camera_does_not_hold_the_others_back():
    clock = Clock()
    intake = build.intake(clock=clock, max_wait_s=10)
    intake.offer("mB", Progress("B", -1, T0 + 0.0, 0), SESSION)
    intake.offer("a0", _emb("A", 0, end=2, wm=50), SESSION)
    assert released_keys(intake) == []  # B may still publish something ending at 0 s
    intake.offer("mB1", Progress("B", -1, T0 + 0.0, 1, idle=True), SESSION)  # B's live source is down
    assert released_keys(intake) == [("A", 1, 0)]
    intake.offer("mB2", Progress("B", -1, T0 + 10.0, 2), SESSION)  # back
    intake.offer("a1", _emb("A", 1, end=12, wm=50), SESSION)
    assert released_keys(intake) == []
    clock.now = 10.5  # B not heard from for longer than max_wait: its worker is gone
    assert released_keys(intake) == [("A", 2, 0)]


def test_a_final_camera_is_not_waited_for_and_late_arrivals_are_counted():
    clock = Clock()
    intake = build.intake(clock=clock)
    intake.offer("mB", Progress("B", 0, T0 + 100, 0, final=True), SESSION)  # B ended after its seq 0
    intake.offer("a0", _emb("A", 0, end=2, wm=50), SESSION)
    intake.offer("mA", Progress("A", 0, T0 + 100, 0, final=True), SESSION)
    assert released_keys(intake) == []  # B's tracklet 0 has not arrived: B is not final yet in order
    intake.offer("b0", _emb("B", 0, end=1, wm=100), SESSION)
    assert released_keys(intake) == [("B", 1, 0), ("A", 1, 0)]
    assert intake.late == 0
    intake.offer("c0", _emb("C", 0, end=1.5, wm=3), SESSION)  # a camera nobody expected, in the past
    assert released_keys(intake) == [("C", 1, 0)]  # decided at once, counted late
    assert intake.late == 1


def test_redelivered_duplicates_are_acknowledged_not_decided_twice():
    clock = Clock()
    intake = build.intake(clock=clock)
    e = _emb("A", 0, end=2, wm=50)
    intake.offer("x1", e, SESSION)
    intake.offer("x2", e, SESSION)
    r = intake.release()
    assert [h.msg_id for b in r.buckets for h in b] == ["x1"]
    assert sorted(r.ack) == ["x1", "x2"]
    assert r.progress and r.progress[0].next_seq == 1


def test_a_camera_run_started_again_under_its_key_is_waited_for_again():
    """A replay interrupted (its camera said final) and run again under the same key: the first marker of
    the new run re-opens the stream, the republished tracklets are ready at once (already decided upstream),
    the new ones are waited for in order again."""
    clock = Clock()
    intake = build.intake(clock=clock)
    intake.offer("a0", _emb("A", 0, end=2, wm=5), SESSION)
    intake.offer("mA", Progress("A", 0, T0 + 5, 3, final=True, started_at=1.0), SESSION)  # interrupted
    intake.offer("mB", Progress("B", -1, T0 + 100, 0), SESSION)
    assert released_keys(intake) == [("A", 1, 0)]
    assert intake.watermark() == T0 + 100  # A is final: only B counts
    intake.offer("mA0", Progress("A", -1, T0 + 0, 0, started_at=2.0), SESSION)  # A runs again
    intake.offer("mA-old", Progress("A", 0, T0 + 50, 2, started_at=1.0), SESSION)  # stale: ignored
    assert intake.watermark() == T0 + 5  # waited for again, from where it stopped
    intake.offer("a0'", _emb("A", 0, end=2, wm=5), SESSION)  # republished
    intake.offer("a1", _emb("A", 1, end=8, wm=9), SESSION)  # new
    assert released_keys(intake) == [("A", 1, 0), ("A", 2, 0)]  # the repeat (decided before) and the new one
