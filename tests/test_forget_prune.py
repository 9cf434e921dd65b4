"""Forgetting a person and retention: nothing of them is left in any table, and their id is never reused.

Runs on SQLite and PostgreSQL through the fixtures of ``tests/test_storage.py``. The tables are enumerated
from the ORM metadata, so a table added later is checked without changing this file: a table that refers to
tracklets or identities (a foreign key) must be emptied of them, and any other table must be listed in
``PERSON_FREE`` on purpose.
"""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from storage import repository as repo
from storage.models import Base, IdentityRow, TrackletRow
from tests.test_pictures_store import pictures, table_counts, track
from tests.test_storage import T0, add, assign, store, target

FIXTURES = (store, target)  # the store on SQLite and PostgreSQL, from tests/test_storage.py

# Tables that hold nothing about a person: cameras and their health, the matcher's read position, and the
# retired ids (a bare number, a reason and a time).
PERSON_FREE = {"cameras", "camera_health_events", "match_progress", "retired_identities"}

# name -> (camera, track, start s, end s, identity or None)
WORLD = {
    "A1": ("A", 1, 0.0, 10.0, 1),
    "B1": ("B", 7, 40.0, 50.0, 1),
    "C1": ("C", 3, 200.0, 210.0, 1),
    "A2": ("A", 2, 1000.0, 1010.0, 2),
    "B2": ("B", 8, 1100.0, 1110.0, 2),
    "A2b": ("A", 9, 5000.0, 5010.0, 2),  # identity 2 comes back much later
    "A3": ("A", 4, 2000.0, 2005.0, 3),
    "U": ("A", 5, 3000.0, 3001.0, None),  # never assigned
}
PER_TRACKLET = {"embeddings": 1, "tracklet_pictures": 4, "tracklet_boxes": 1, "tracklets": 1}


def add_world(s) -> dict[str, int]:
    """WORLD's tracklets, each with an embedding, 3 crops + 1 attention picture and per-frame boxes, and their
    identities, in session ``s`` (not committed); returns name -> tracklet id."""
    ids = {}
    for name, (camera, track_id, start, end, identity) in WORLD.items():
        tid = ids[name] = add(s, camera, track_id, start, end)
        repo.add_embedding(s, tid, model="m", vector=[0.6, 0.8], part_visibility=[1.0, 0.5])
        repo.add_pictures(s, tid, pictures(tid))
        repo.add_boxes(s, tid, track(int(start * 10), 5, seed=tid))
        if identity is not None:
            assign(s, tid, identity)
    return ids


@pytest.fixture
def world(store) -> dict[str, int]:
    """WORLD stored with an embedding, 3 crops + 1 attention picture and per-frame boxes per tracklet,
    plus camera health and match progress; returns name -> tracklet id."""
    with store.session() as s:
        ids = add_world(s)
        repo.add_health_event(s, "A", event="disconnected", time=T0 + 100)
        repo.save_progress(s, [repo.StreamProgress("run1", "A", 3, T0 + 10, False)], now=repo._utc(T0, "now"))
        s.commit()
    return ids


def references(table: sa.Table) -> list[tuple[sa.Column, str]]:
    """The columns of ``table`` that name a tracklet or an identity: the keys and every foreign key to them."""
    keys = {TrackletRow.__table__.c.id: "tracklet", IdentityRow.__table__.c.id: "identity"}
    found = []
    for column in table.columns:
        targets = [column, *(fk.column for fk in column.foreign_keys)]
        found += [(column, keys[c]) for c in targets if c in keys]
    return found


def leftovers(store, tracklet_ids, identity_ids) -> dict[str, int]:
    """Rows, per table, that still name one of ``tracklet_ids`` or ``identity_ids``."""
    wanted = {"tracklet": list(tracklet_ids), "identity": list(identity_ids)}
    found = {}
    with store.session(readonly=True) as s:
        for table in Base.metadata.sorted_tables:
            refs = references(table)
            if refs:
                where = sa.or_(*(column.in_(wanted[kind]) for column, kind in refs))
                n = s.execute(sa.select(sa.func.count()).select_from(table).where(where)).scalar_one()
                if n:
                    found[table.name] = n
    return found


def test_every_table_either_refers_to_people_or_is_known_to_hold_none():
    """A new table must refer to tracklets / identities by a foreign key (forget and prune then delete its
    rows) or be listed in PERSON_FREE after checking that it holds nothing about a person."""
    assert {t.name for t in Base.metadata.sorted_tables if not references(t)} == PERSON_FREE
    assert {c.name for c in Base.metadata.tables["retired_identities"].columns} == {
        "identity_id",
        "reason",
        "retired_at",
    }


# ----------------------------------------------------------------------------------------------------
# forget


def test_forget_leaves_nothing_of_the_person(store, world):
    before = table_counts(store)
    with store.session() as s:
        report = repo.forget_identity(s, 1, now=T0 + 9000)
        s.commit()
    mine = sorted(world[n] for n in ("A1", "B1", "C1"))
    assert report == repo.ForgetReport(
        identity_id=1,
        tracklet_ids=tuple(mine),
        deleted={**{k: 3 * v for k, v in PER_TRACKLET.items()}, "sightings": 3, "identities": 1},
    )
    assert leftovers(store, mine, [1]) == {}
    after = table_counts(store)
    changes = {k: before[k] - after[k] for k in before if before[k] != after[k]}
    assert changes == {**report.deleted, "retired_identities": -1}  # nothing else was touched
    with store.session(readonly=True) as s:
        assert repo.pictures_of_identity(s, 1) == []
        assert len(repo.pictures_of_identity(s, 2)) == 3 * 4
        assert {g.identity_id for g in repo.load_gallery(s, "m")} == {2, 3}
        assert repo.timeline(s, 1) == []
        assert repo.is_retired(s, 1) and not repo.is_retired(s, 2)
        row = s.execute(sa.text("SELECT identity_id, reason FROM retired_identities")).one()
        assert tuple(row) == (1, "forgotten")


def test_a_forgotten_id_is_never_used_again(store, world):
    with store.session() as s:
        assert repo.max_identity_id(s) == 3
        repo.forget_identity(s, 3)  # the largest id: without the tombstone it would be handed out again
        s.commit()
    with store.session() as s:
        assert repo.max_identity_id(s) == 3  # a restarted matcher numbers new identities from 4
        with pytest.raises(repo.IdentityRetiredError, match="identity 3 was forgotten") as info:
            repo.ensure_identity(s, 3, created_at=T0)
        assert isinstance(info.value, LookupError) and info.value.identity_id == 3
        assert repo.ensure_identity(s, 4, created_at=T0) is True


def test_forget_is_idempotent_and_checks_the_id(store, world):
    with store.session() as s:
        repo.forget_identity(s, 2)
        s.commit()
    with store.session() as s:
        again = repo.forget_identity(s, 2)
        assert again == repo.ForgetReport(2, (), {}, already_retired=True)
        with pytest.raises(LookupError, match="no identity with id 99"):
            repo.forget_identity(s, 99)
        for bad in (-1, True, 1.5):
            with pytest.raises(ValueError, match="identity_id"):
                repo.forget_identity(s, bad)
        assert repo.max_identity_id(s) == 3  # an unknown id was not retired


def test_forget_never_commits(store, world):
    before = table_counts(store)
    with store.session() as s:
        repo.forget_identity(s, 1)
    assert table_counts(store) == before


def test_forget_waits_for_a_matcher_adding_a_sighting_and_deletes_that_too(store, world):
    """A matcher transaction that assigns a new tracklet to the identity while it is being forgotten: the
    forget waits for it (row lock on PostgreSQL, the write lock on SQLite) and then deletes that tracklet."""
    matcher = store.session()
    s = matcher.__enter__()
    late = add(s, "C", 42, 6000, 6010)
    repo.add_pictures(s, late, pictures(late))
    repo.ensure_identity(s, 1, created_at=T0)
    repo.add_sighting(s, late, 1, 0.9, T0 + 6010)  # uncommitted: holds its lock
    reports, errors = [], []

    def forget():
        try:
            with store.session() as f:
                reports.append(repo.forget_identity(f, 1))
                f.commit()
        except Exception as e:  # asserted below: a thread cannot fail the test itself
            errors.append(e)

    thread = threading.Thread(target=forget)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive()  # waiting for the matcher's transaction
    s.commit()
    matcher.__exit__(None, None, None)
    thread.join(timeout=60)
    assert errors == []
    assert late in reports[0].tracklet_ids
    assert leftovers(store, [late, world["A1"]], [1]) == {}


def test_a_matcher_cannot_revive_a_forgotten_identity(store, world):
    with store.session() as s:
        repo.forget_identity(s, 1)
        s.commit()
    with pytest.raises(repo.IdentityRetiredError), store.session() as s:
        tid = add(s, "A", 77, 7000, 7001)
        repo.ensure_identity(s, 1, created_at=T0)  # a gallery that still held identity 1
        repo.add_sighting(s, tid, 1, 0.9, T0)
    assert leftovers(store, [], [1]) == {}


# ----------------------------------------------------------------------------------------------------
# prune


@pytest.mark.parametrize(
    ("cutoff_s", "gone", "retired", "updated"),
    [
        (-1.0, [], [], []),  # nothing is that old
        (10.0, [], [], []),  # A1 ends exactly at the cutoff: kept
        (10.5, ["A1"], [], [1]),
        (1500.0, ["A1", "B1", "C1", "A2", "B2"], [1], [2]),
        (4000.0, ["A1", "B1", "C1", "A2", "B2", "A3", "U"], [1, 3], [2]),
        (1e6, list(WORLD), [1, 2, 3], []),  # everything
    ],
)
def test_prune_deletes_what_ended_before_the_cutoff(store, world, cutoff_s, gone, retired, updated):
    before = table_counts(store)
    with store.session() as s:
        report = repo.prune_before(s, T0 + cutoff_s, now=T0 + 2e6)
        s.commit()
    gone_ids = sorted(world[n] for n in gone)
    assert report.cutoff == repo._utc(T0 + cutoff_s, "cutoff")
    assert (report.tracklet_ids, report.identity_ids, report.updated_identity_ids) == (
        tuple(gone_ids),
        tuple(retired),
        tuple(updated),
    )
    assert leftovers(store, gone_ids, retired) == {}
    after = table_counts(store)
    assigned = sum(WORLD[n][4] is not None for n in gone)
    expected = {k: v * len(gone) for k, v in PER_TRACKLET.items()} | {"sightings": assigned}
    if retired:
        expected["identities"] = len(retired)
    assert {k: v for k, v in report.deleted.items() if v} == {k: v for k, v in expected.items() if v}
    changes = {k: before[k] - after[k] for k in before if before[k] != after[k]}
    if retired:
        expected["retired_identities"] = -len(retired)
    assert changes == {k: v for k, v in expected.items() if v}
    kept = sorted(set(world.values()) - set(gone_ids))
    with store.session(readonly=True) as s:
        for tid in kept:  # what is newer than the cutoff keeps every picture, its boxes and embedding
            assert len(repo.pictures_of_tracklet(s, tid)) == 4
            assert len(repo.boxes_of_tracklet(s, tid)) == 5
        assert sorted(g.tracklet_id for g in repo.load_gallery(s, "m")) == sorted(
            tid for name, tid in world.items() if tid in kept and WORLD[name][4] is not None
        )
        assert repo.max_identity_id(s) == 3
        for identity_id in retired:
            assert repo.is_retired(s, identity_id)
        assert repo.counts(s)["cameras"] == 3 and repo.counts(s)["camera_health_events"] == 1
        assert len(repo.load_progress(s)) == 1


def test_prune_refreshes_the_statistics_of_identities_it_shrinks(store, world):
    with store.session() as s:
        repo.prune_before(s, T0 + 1500)
        s.commit()
    with store.session(readonly=True) as s:
        (two,) = [i for i in repo.list_identities(s) if i.identity_id == 2]
        assert (two.first_seen, two.num_tracklets, two.cameras) == (repo._utc(T0 + 5000, "t"), 1, ("A",))
        row = s.get(IdentityRow, 2)
        assert (row.first_seen, row.num_tracklets, row.num_cameras) == (repo._utc(T0 + 5000, "t"), 1, 1)


def test_prune_of_an_empty_store(store):
    with store.session() as s:
        report = repo.prune_before(s, T0)
        assert report == repo.PruneReport(repo._utc(T0, "cutoff"), (), (), (), {})


def test_prune_never_commits_and_checks_the_cutoff(store, world):
    before = table_counts(store)
    with store.session() as s:
        repo.prune_before(s, T0 + 1e6)
        with pytest.raises(ValueError, match="naive"):
            repo.prune_before(s, repo._utc(T0, "t").replace(tzinfo=None))
    assert table_counts(store) == before


@pytest.mark.parametrize("identity_id", [1, 4])  # an identity being forgotten; a new id that no one has
def test_a_matcher_waiting_for_a_forget_then_sees_the_tombstone(store, world, identity_id):
    """The forget holds its locks (row lock on PostgreSQL, the write lock on SQLite); a matcher that wants
    the forgotten identity meanwhile waits and then refuses it, and a new id is unaffected."""
    forgetting = store.session()
    f = forgetting.__enter__()
    repo.forget_identity(f, 1)  # uncommitted
    results, errors = [], []

    def matcher():
        try:
            with store.session() as s:
                results.append(repo.ensure_identity(s, identity_id, created_at=T0))
                s.commit()
        except Exception as e:  # asserted below: a thread cannot fail the test itself
            errors.append(e)

    thread = threading.Thread(target=matcher)
    thread.start()
    time.sleep(1.0)
    waits = thread.is_alive()
    f.commit()
    forgetting.__exit__(None, None, None)
    thread.join(timeout=60)
    if identity_id == 1:
        assert waits and results == [] and [type(e) for e in errors] == [repo.IdentityRetiredError]
        assert leftovers(store, [], [1]) == {}
    else:
        assert (results, errors) == ([True], [])
