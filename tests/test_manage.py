"""``python -m pipeline.tools.manage forget|prune|export`` through a subprocess, on a SQLite store built with the
real storage API (and the real Redis for the stream clean-up): nothing of a forgotten or pruned person is
left in any table (every table of the models is enumerated) or stream, and the MOT export carries global ids.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import redis

from pipeline.camera.mot_io import read_mot
from pipeline.transport.messages import Progress, TrackletEmbedding
from pipeline.transport.queues import RedisQueue, dead_letter_stream
from pipeline.transport.wire import encode_embedding, encode_progress
from storage import repository as repo
from storage.db import open_store
from tests.conftest import REDIS_URL, redis_unreachable
from tests.queue_defaults import QUEUE
from tests.test_forget_prune import PER_TRACKLET, WORLD, add_world, leftovers
from tests.test_pictures_store import pictures, table_counts, track
from tests.test_storage import T0, add, assign, store, target

REPO = Path(__file__).resolve().parents[1]
FIXTURES = (store, target)  # the store on SQLite and PostgreSQL, from tests/test_storage.py


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.tools.manage", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, dict[str, int]]:
    """A SQLite store holding WORLD (tests/test_forget_prune.py): per tracklet an embedding, 3 crops + 1
    attention picture and 5 per-frame boxes; camera A has a second run. Returns the URL and name -> id."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    try:
        with store.session() as s:
            ids = add_world(s)
            s.commit()
    finally:
        store.dispose()
    return url, ids


def _of(identity: int) -> list[str]:
    return [n for n, w in WORLD.items() if w[4] == identity]


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# forget


def test_forget_leaves_nothing_of_the_person_and_says_what_it_deleted(db) -> None:
    url, ids = db
    store = open_store(url)
    before = table_counts(store)
    done = manage("forget", "--db", url, "--identity", "1")
    assert done.returncode == 0, done.stderr
    gone = [ids[n] for n in _of(1)]
    assert "forgot identity 1: 3 tracklet(s)" in done.stdout
    for table, per in PER_TRACKLET.items():
        assert f"{table} " in done.stdout and f" {per * 3}\n" in done.stdout, (table, done.stdout)
    assert leftovers(store, gone, [1]) == {}
    after = table_counts(store)
    assert after["tracklets"] == before["tracklets"] - 3 and after["identities"] == before["identities"] - 1
    assert after["retired_identities"] == 1
    with store.session(readonly=True) as s:
        assert repo.is_retired(s, 1) and repo.max_identity_id(s) == 3
        assert [r.identity_id for r in repo.list_identities(s)] == [2, 3]
    again = manage("forget", "--db", url, "--identity", "1")
    assert again.returncode == 0 and "already forgotten" in again.stdout
    assert table_counts(store) == after
    store.dispose()


@pytest.mark.parametrize(
    ("identity", "fragment"),
    [("999", "no identity with id 999"), ("-1", "identity_id"), ("x", "invalid int")],
)
def test_forget_of_an_unknown_id_is_a_one_line_error(db, identity: str, fragment: str) -> None:
    url, _ = db
    store = open_store(url)
    before = table_counts(store)
    done = manage("forget", "--db", url, "--identity", identity)
    assert done.returncode == 2 and done.stdout == ""
    assert fragment in _one_line(done.stderr) if identity != "x" else fragment in done.stderr
    assert table_counts(store) == before
    store.dispose()


def _embedding_of(camera: str, track_id: int, start: float, *, session: str = "run1") -> bytes:
    frame = int(start * 10)
    e = TrackletEmbedding(
        camera, track_id, 0, frame, frame + 50, T0 + start, T0 + start + 5, 51,
        np.array([0.6, 0.8], np.float32), np.ones(2, np.float32), "m",
    )  # fmt: skip
    return encode_embedding(e, session=session)


@pytest.mark.skipif(bool(redis_unreachable()), reason=redis_unreachable() or "")
def test_forget_with_redis_deletes_the_stream_entries_of_the_person(db) -> None:
    url, ids = db
    prefix = f"test-manage:{uuid.uuid4().hex}"
    streams = [f"{prefix}:tracklets", f"{prefix}:embeddings"]
    queue = RedisQueue(REDIS_URL, retry_for_s=5.0, **QUEUE)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        theirs = {(WORLD[n][0], WORLD[n][1], WORLD[n][2]) for n in _of(1)}  # camera, track, start
        others = [("A", 2, 1000.0), ("B", 8, 1100.0), ("U", 5, 3000.0)]
        kept = [queue.publish(streams[1], _embedding_of(*o)) for o in others]
        kept.append(queue.publish(streams[1], _embedding_of("A", 1, 0.0, session="another-run")))  # not them
        kept.append(queue.publish(streams[1], encode_progress(Progress("A", 3, T0, 0), session="run1")))
        doomed = [queue.publish(streams[1], _embedding_of(*t)) for t in sorted(theirs)]
        # one of theirs also sits in the dead-letter stream, and one in the other stream, unacknowledged
        queue.ensure_group(streams[0], "reid")
        queue.publish(streams[0], _embedding_of("B", 7, 40.0))
        [msg] = queue.consume(streams[0], "reid", "c", count=1, block_ms=0)
        queue.dead_letter(streams[0], "reid", msg, "test")
        queue.publish(streams[0], _embedding_of("C", 3, 200.0))

        done = manage(
            "forget", "--db", url, "--identity", "1", "--redis", REDIS_URL,
            "--stream", streams[0], "--stream", streams[1],
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "stream entries deleted" in done.stdout
        remaining = [e[0].decode() for e in client.xrange(streams[1])]
        assert remaining == kept and not set(doomed) & set(remaining)
        assert client.xlen(streams[0]) == 0 and client.xlen(dead_letter_stream(streams[0])) == 0
        # the deleted entries are never handed out to the group
        assert queue.consume(streams[0], "reid", "c", count=10, block_ms=0) == []
        assert queue.reclaim(streams[0], "reid", "c2", min_idle_ms=0, count=10) == []
        assert leftovers(open_store(url), [ids[n] for n in _of(1)], [1]) == {}
    finally:
        client.delete(*streams, *(dead_letter_stream(s) for s in streams))
        client.close()
        queue.close()


def test_stream_options_need_redis(db) -> None:
    url, _ = db
    done = manage("forget", "--db", url, "--identity", "1", "--stream", "reid:embeddings")
    assert done.returncode == 2 and "--stream needs --redis" in _one_line(done.stderr)


# ----------------------------------------------------------------------------------------------------
# prune


def _iso(posix: float) -> str:
    return datetime.fromtimestamp(posix, UTC).isoformat()


def test_prune_before_a_time_deletes_what_ended_before_it(db) -> None:
    url, ids = db
    store = open_store(url)
    done = manage("prune", "--db", url, "--before", _iso(T0 + 1500))  # before A3, A2b and U
    assert done.returncode == 0, done.stderr
    old = [n for n, w in WORLD.items() if w[3] < 1500]
    assert "5 tracklet(s), 1 identit(ies) retired, 1 kept" in done.stdout, done.stdout
    assert leftovers(store, [ids[n] for n in old], [1]) == {}
    with store.session(readonly=True) as s:
        assert [r.identity_id for r in repo.list_identities(s)] == [2, 3]
        assert [t.tracklet_id for t in repo.timeline(s, 2)] == [ids["A2b"]]
        assert repo.is_retired(s, 1) and not repo.is_retired(s, 2)
    store.dispose()


def test_prune_by_days_uses_the_wall_clock(db) -> None:
    url, ids = db
    store = open_store(url)
    done = manage("prune", "--db", url, "--days", "1")  # the world is from 2023: all of it is older
    assert done.returncode == 0, done.stderr
    assert leftovers(store, list(ids.values()), [1, 2, 3]) == {}
    counts = table_counts(store)
    assert {k: counts[k] for k in ("tracklets", "identities", "retired_identities")} == {
        "tracklets": 0,
        "identities": 0,
        "retired_identities": 3,
    }
    store.dispose()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--days", "0"), "--days: expected a number of days > 0"),
        (("--days", "-2"), "--days: expected a number of days > 0"),
        (("--before", "yesterday"), "--before: expected an ISO 8601 time"),
        (("--days", "1", "--before", "2024-01-01"), "not allowed with argument"),
        ((), "one of the arguments --days --before is required"),
    ],
)
def test_prune_rejects_bad_cutoffs(db, args: tuple[str, ...], fragment: str) -> None:
    url, _ = db
    store = open_store(url)
    before = table_counts(store)
    done = manage("prune", "--db", url, *args)
    assert done.returncode == 2 and fragment in done.stderr, done.stderr
    assert table_counts(store) == before
    store.dispose()


# ----------------------------------------------------------------------------------------------------
# export


def test_export_mot_writes_one_file_per_camera_and_run_with_global_ids(db, tmp_path: Path) -> None:
    url, ids = db
    store = open_store(url)
    with store.session() as s:  # camera A runs again: its frames restart, so a second file
        tid = add(s, "A", 1, 9000.0, 9001.0, key="run2")
        repo.add_boxes(s, tid, track(90000, 3, seed=5))
        assign(s, tid, 3)
        s.commit()
    out = tmp_path / "mot"
    done = manage("export", "--db", url, "--format", "mot", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["A-1.txt", "A-2.txt", "B.txt", "C.txt"]
    with store.session(readonly=True) as s:
        for name, camera, run in [
            ("A-1", "A", "run1"),
            ("A-2", "A", "run2"),
            ("B", "B", "run1"),
            ("C", "C", "run1"),
        ]:
            rows = read_mot(out / f"{name}.txt")
            np.testing.assert_allclose(rows, repo.mot_rows(s, camera, run), atol=0.006)
    a1 = read_mot(out / "A-1.txt")
    assert sorted({int(i) for i in a1[:, 1]}) == [1, 2, 3]  # global identities; U (unassigned) is absent
    assert len(a1) == 5 * 4  # A1, A2, A2b, A3: five boxes each
    assert sorted({int(i) for i in read_mot(out / "A-2.txt")[:, 1]}) == [3]
    assert read_mot(out / "A-2.txt")[:, 0].tolist() == [90001.0, 90002.0, 90003.0]  # 1-based frames

    one = manage("export", "--db", url, "--format", "mot", "--out", str(tmp_path / "b"), "--camera", "B")
    assert one.returncode == 0 and [p.name for p in (tmp_path / "b").iterdir()] == ["B.txt"]
    unknown = manage("export", "--db", url, "--format", "mot", "--out", str(tmp_path / "z"), "--camera", "Z")
    assert unknown.returncode == 2 and "no tracklets of camera 'Z'" in _one_line(unknown.stderr)
    store.dispose()


def test_export_of_an_empty_store_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_store(url).dispose()
    done = manage("export", "--db", url, "--format", "mot", "--out", str(tmp_path / "out"))
    assert done.returncode == 0 and "(0 file(s))" in done.stdout
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.skipif(bool(redis_unreachable()), reason=redis_unreachable() or "")
def test_prune_with_redis_trims_the_entries_published_before_the_cutoff(db) -> None:
    url, _ = db
    stream = f"test-manage:{uuid.uuid4().hex}:tracklets"
    queue = RedisQueue(REDIS_URL, retry_for_s=5.0, **QUEUE)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for o in [("A", 2, 1000.0), ("B", 8, 1100.0)]:
            queue.publish(stream, _embedding_of(*o))
        old = manage(
            "prune", "--db", url, "--before", _iso(T0 + 1500), "--redis", REDIS_URL, "--stream", stream
        )
        assert old.returncode == 0, old.stderr
        assert client.xlen(stream) == 2, "published now: after a 2023 cutoff, so kept"
        soon = datetime.now(UTC).timestamp() + 60
        new = manage("prune", "--db", url, "--before", _iso(soon), "--redis", REDIS_URL, "--stream", stream)
        assert new.returncode == 0, new.stderr
        assert client.xlen(stream) == 0
    finally:
        client.delete(stream, dead_letter_stream(stream))
        client.close()
        queue.close()


# ----------------------------------------------------------------------------------------------------
# The functions on PostgreSQL too


@pytest.mark.parametrize("target", ["postgresql"], indirect=True)
def test_forget_and_export_functions_on_postgresql(store, tmp_path: Path) -> None:
    from pipeline.tools.manage import export_mot, forget

    ids = {}
    with store.session() as s:
        for name, (camera, track_id, start, end, identity) in WORLD.items():
            tid = ids[name] = add(s, camera, track_id, start, end)
            repo.add_pictures(s, tid, pictures(tid))
            repo.add_boxes(s, tid, track(int(start * 10), 5, seed=tid))
            if identity is not None:
                assign(s, tid, identity)
        s.commit()
    report, cleanup = forget(store, 2)
    assert cleanup is None and sorted(report.tracklet_ids) == sorted(ids[n] for n in _of(2))
    assert leftovers(store, report.tracklet_ids, [2]) == {}
    with pytest.raises(LookupError):
        forget(store, 999)
    files = export_mot(store, tmp_path)
    assert [(f.camera_id, f.path.name) for f in files] == [("A", "A.txt"), ("B", "B.txt"), ("C", "C.txt")]
    assert sorted({int(i) for f in files for i in read_mot(f.path)[:, 1]}) == [1, 3]


# ----------------------------------------------------------------------------------------------------
# the same through run_pipeline.py (the documented command lines)


def run_pipeline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run_pipeline.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_run_pipeline_forget_prune_and_query_export_are_these_tools(db, tmp_path: Path) -> None:
    url, ids = db
    out = tmp_path / "mot"
    exported = run_pipeline("query", "export", "--db", url, "--format", "mot", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in _export_with_module(url, tmp_path / "module")
    )
    forgot = run_pipeline("forget", "--db", url, "--identity", "1")
    assert forgot.returncode == 0 and "forgot identity 1" in forgot.stdout, forgot.stderr
    store = open_store(url)
    assert leftovers(store, [ids[n] for n in _of(1)], [1]) == {}
    store.dispose()
    unknown = run_pipeline("forget", "--db", url, "--identity", "999")
    assert unknown.returncode == 2 and _one_line(unknown.stderr).startswith("run_pipeline.py forget: error:")
    pruned = run_pipeline("prune", "--db", url, "--before", "2100-01-01T00:00:00Z")
    assert pruned.returncode == 0, pruned.stderr
    store = open_store(url)
    assert table_counts(store)["tracklets"] == 0
    store.dispose()


def _export_with_module(url: str, out: Path) -> list[Path]:
    done = manage("export", "--db", url, "--format", "mot", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return list(out.iterdir())
