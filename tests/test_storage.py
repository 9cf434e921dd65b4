"""The store: migrations, repository functions, idempotency, queries and the schema document's SQL.

Every store test runs on SQLite (a temporary file) and on the machine's PostgreSQL (a unique schema per test,
dropped afterwards); the PostgreSQL cases skip, saying why, only when the server is unreachable. Set
``REID_TEST_PG_URL`` to use another server than ``postgresql+psycopg://postgres@127.0.0.1:5432/test``.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from common.redact import redact_text
from pipeline.transport.messages import Tracklet, TrackletEmbedding
from storage import queries
from storage import repository as repo
from storage.db import Store, StoreError, alembic_config, open_store
from storage.models import Base, CameraRow, EmbeddingRow, IdentityRow, SightingRow, TrackletRow, UTCDateTime
from tests.conftest import PG_URL, pg_unreachable

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
TABLES = {
    "cameras",
    "camera_health_events",
    "tracklets",
    "identities",
    "sightings",
    "embeddings",
    "match_progress",
    "tracklet_pictures",
    "tracklet_boxes",
    "retired_identities",
}
NEW_IN_0003 = {"tracklet_pictures", "tracklet_boxes", "retired_identities"}
HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def at(seconds: float) -> datetime:
    """The aware UTC datetime ``seconds`` after T0."""
    return datetime.fromtimestamp(T0 + seconds, UTC)


# ----------------------------------------------------------------------------------------------------
# Fixtures: one store per test, on each database


@dataclass(frozen=True)
class Target:
    url: str
    schema: str | None


def _pg_admin(sql: str) -> None:
    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    if request.param == "sqlite":
        yield Target(f"sqlite:///{tmp_path / 'store.db'}", None)
        return
    if reason := pg_unreachable():
        pytest.skip(reason)
    schema = f"reid_test_{uuid.uuid4().hex[:16]}"
    _pg_admin(f'CREATE SCHEMA "{schema}"')
    try:
        yield Target(PG_URL, schema)
    finally:
        _pg_admin(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def store(target):
    s = open_store(target.url, schema=target.schema)
    try:
        yield s
    finally:
        s.dispose()


def add(
    session, camera: str, track: int, start: float, end: float, *, chunk: int = 0, key: str = "run1"
) -> int:
    """A tracklet of ``camera`` over ``[T0+start, T0+end]`` with no crops; returns its id."""
    return repo.add_tracklet(
        session,
        session_key=key,
        camera_id=camera,
        track_id=track,
        chunk=chunk,
        first_frame=int(start * 10),
        last_frame=int(end * 10),
        start_time=T0 + start,
        end_time=T0 + end,
        num_frames=int((end - start) * 10) + 1,
    )


def assign(session, tracklet_id: int, identity_id: int, similarity: float | None = 0.9) -> int:
    repo.ensure_identity(session, identity_id, created_at=T0)
    return repo.add_sighting(session, tracklet_id, identity_id, similarity, T0 + 5000)


# Sightings of the scenario: name -> (camera, track, start s, end s, identity or None for unassigned).
SCENE = {
    "A1": ("A", 1, 0.0, 10.0, 1),
    "B1": ("B", 7, 40.0, 50.0, 1),  # 30 s after A1
    "C1": ("C", 3, 200.0, 210.0, 1),  # 190 s after A1
    "A2": ("A", 2, 1000.0, 1010.0, 2),
    "B2": ("B", 8, 1100.0, 1110.0, 2),  # 90 s after A2
    "A3": ("A", 4, 2000.0, 2005.0, 3),
    "U": ("A", 5, 3000.0, 3001.0, None),  # never assigned
}


@pytest.fixture
def scene(store) -> dict[str, int]:
    """The SCENE stored and committed, plus health history for cameras A and B; returns name -> tracklet id."""
    ids = {}
    with store.session() as s:
        for camera, start in (("A", 0.0), ("B", 0.0), ("C", 0.0)):
            repo.upsert_camera(s, camera, f"videos/{camera}.mp4", T0 + start)
        for name, (camera, track, start, end, identity) in SCENE.items():
            ids[name] = add(s, camera, track, start, end)
            if identity is not None:
                assign(s, ids[name], identity, None if name.endswith("1") and camera == "A" else 0.8)
            if identity == 1:  # the best crop and a worse one (not real JPEG data: only the marker)
                pictures = [
                    repo.Picture("crop", r, 0, 128, 256, b"\xff\xd8\xff" + name.encode() + b"\xff\xd9")
                    for r in (0, 1)
                ]
                repo.add_pictures(s, ids[name], pictures)
        for camera, connected in (("A", True), ("B", False), ("C", True)):
            repo.update_camera_health(
                s,
                camera,
                connected=connected,
                reconnects=0,
                last_frame_time=T0 + 4000,
                frames=100,
                fps=10.0,
                last_error=None,
                now=T0 + 4000,
            )
        repo.add_health_event(s, "A", event="disconnected", time=T0 + 100, detail="timeout")
        repo.add_health_event(s, "A", event="reconnected", time=T0 + 160)
        repo.add_health_event(s, "B", event="disconnected", time=T0 + 3900)
        s.commit()
    return ids


def count(store: Store, table) -> int:
    with store.session(readonly=True) as s:
        return s.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# ----------------------------------------------------------------------------------------------------
# Opening and migrating


def test_migrations_are_idempotent(target):
    for _ in range(2):
        store = open_store(target.url, schema=target.schema)
        try:
            assert store.revision() == HEAD
            inspector = sa.inspect(store.engine)
            assert set(inspector.get_table_names()) == TABLES | {"alembic_version"}
            assert inspector.get_view_names() == ["identity_timeline"]
        finally:
            store.dispose()


def test_downgrade_to_base_and_upgrade_again(store, target):
    cfg = alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    store.dispose()
    assert set(sa.inspect(store.engine).get_table_names()) == {"alembic_version"}
    assert sa.inspect(store.engine).get_view_names() == []
    again = open_store(target.url, schema=target.schema)
    assert again.revision() == HEAD
    again.dispose()


def test_downgrade_of_0003_keeps_the_older_rows(store, target, scene):
    with store.session() as s:
        repo.forget_identity(s, 3)
        s.commit()
    cfg = alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    store.dispose()
    inspector = sa.inspect(store.engine)
    assert set(inspector.get_table_names()) == TABLES - NEW_IN_0003 | {"alembic_version"}
    assert "ix_tracklets_end_posix" not in {ix["name"] for ix in inspector.get_indexes("tracklets")}
    assert count(store, TrackletRow) == len(SCENE) - 1 and count(store, SightingRow) == len(SCENE) - 2
    again = open_store(target.url, schema=target.schema)
    try:
        assert again.revision() == HEAD
        with again.session(readonly=True) as s:
            assert repo.counts(s)["tracklets"] == len(SCENE) - 1
            assert repo.counts(s)["tracklet_pictures"] == 0 and repo.counts(s)["retired_identities"] == 0
    finally:
        again.dispose()


def test_upgrade_from_0003_keeps_the_cameras_and_adds_their_view(store, target, scene):
    cfg = alembic_config()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    store.dispose()
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("cameras")}
    assert not columns & {"crop", "frame_width", "frame_height"}
    with store.engine.begin() as conn:  # a camera registered by 0003-era code, with health
        conn.execute(
            sa.text(
                "INSERT INTO cameras (id, source, reconnects, frames, fps) VALUES ('D', 'd.mp4', 2, 50, 5.0)"
            )
        )
    again = open_store(target.url, schema=target.schema)
    try:
        assert again.revision() == HEAD
        with again.session() as s:
            rows = {r.id: r for r in s.execute(sa.select(CameraRow)).scalars()}
            assert set(rows) == {"A", "B", "C", "D"}
            assert (rows["D"].source, rows["D"].reconnects, rows["D"].frames, rows["D"].fps) == (
                "d.mp4",
                2,
                50,
                5.0,
            )
            assert rows["A"].source == "videos/A.mp4" and rows["B"].connected is False
            assert all((r.crop, r.frame_width, r.frame_height) == (None, None, None) for r in rows.values())
            assert repo.counts(s)["tracklets"] == len(SCENE)
            repo.upsert_camera(s, "D", "d.mp4", T0, crop=[10, 20, 330, 260], frame_size=(320, 240))
            s.commit()
        with again.session(readonly=True) as s:
            row = s.get(CameraRow, "D")
            assert (row.crop, row.frame_width, row.frame_height, row.reconnects) == (
                [10, 20, 330, 260],
                320,
                240,
                2,
            )
    finally:
        again.dispose()


def test_models_match_the_migrations(store):
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_concurrent_open_store_all_succeed(target):
    n = 4
    barrier = threading.Barrier(n)
    revisions, errors = [], []

    def opener():
        barrier.wait()
        try:
            store = open_store(target.url, schema=target.schema)
            revisions.append(store.revision())
            store.dispose()
        except Exception as e:  # collected and asserted below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=opener) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert revisions == [HEAD] * n


# Imports first, then waits for a common start instant so that the migrations really overlap.
OPEN_IN_A_PROCESS = """
import sys, time
from storage.db import open_store
url, schema, start = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))
store = open_store(url, schema=schema)
print(store.revision())
store.dispose()
"""


def test_concurrent_open_store_from_processes(target):
    n = 4
    start = time.time() + 5.0  # the interpreters need a moment to import sqlalchemy and alembic
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_IN_A_PROCESS, target.url, target.schema or "", str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [
        (p.returncode, err.strip().splitlines()[-1:]) for p, (_, err) in zip(procs, results, strict=True)
    ] == [(0, [])] * n
    assert [out.strip() for out, _ in results] == [HEAD] * n


def test_open_store_creates_a_missing_schema():
    if reason := pg_unreachable():
        pytest.skip(reason)
    schema = f"reid_test_{uuid.uuid4().hex[:16]}"
    try:
        store = open_store(PG_URL, schema=schema)
        with store.session(readonly=True) as s:
            assert s.execute(sa.text("SELECT current_schema()")).scalar_one() == schema
        store.dispose()
    finally:
        _pg_admin(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_in_memory_sqlite_store_keeps_its_data_across_sessions():
    store = open_store("sqlite://")
    with store.session() as s:
        tid = add(s, "A", 1, 0, 1)
        s.commit()
    with store.session(readonly=True) as s:
        assert s.get(TrackletRow, tid).camera_id == "A"
    store.dispose()


def test_open_store_refuses_a_database_from_newer_code(target):
    store = open_store(target.url, schema=target.schema)
    with store.session() as s:
        s.execute(sa.text("UPDATE alembic_version SET version_num = 'from_the_future'"))
        s.commit()
    store.dispose()
    with pytest.raises(StoreError, match="from_the_future"):
        open_store(target.url, schema=target.schema)


def test_sqlite_connection_settings(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with store.session() as s:
        assert s.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert s.execute(sa.text("PRAGMA foreign_keys")).scalar_one() == 1
        assert s.execute(sa.text("PRAGMA busy_timeout")).scalar_one() >= 1000
    store.dispose()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("", "cannot open store :"),
        ("not a url s3cret@", "not an SQLAlchemy URL"),
        (
            "postgresql+psycopg://reid:s3cret@127.0.0.1:1/test",
            "postgresql+psycopg://reid:***@127.0.0.1:1/test",
        ),
        ("postgresql+psycopg://reid:s3cret@127.0.0.1:notaport/test", "not an SQLAlchemy URL"),
        ("postgresql+psycopg2://reid:s3cret@127.0.0.1/test", "psycopg2"),
        ("mysql://reid:s3cret@127.0.0.1/test", "unsupported database 'mysql'"),
        ("postgresql+psycopg://reid@127.0.0.1:1/test?password=s3cret", "?password=***"),
        ("sqlite:////nonexistent-dir-for-reid/sub/x.db", "unable to open database file"),
    ],
)
def test_open_store_errors_are_one_line_and_redacted(url, shown, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert message.startswith("cannot open store")
    assert shown in message
    assert "s3cret" not in message and "\n" not in message
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(
    ("url", "schema"),
    [("sqlite:///x.db", "reid"), (PG_URL, 'bad"name'), (PG_URL, ""), (PG_URL, "1starts_with_digit")],
)
def test_open_store_rejects_bad_schemas(url, schema):
    with pytest.raises(StoreError, match="schema"):
        open_store(url, schema=schema)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("no url here", "no url here"),
        (
            "cannot open rtsp://admin:hunter2@10.0.0.5/stream: 401",
            "cannot open rtsp://admin:***@10.0.0.5/stream: 401",
        ),
        ("a http://u:p@h/x b redis://:pw@r:6379", "a http://u:***@h/x b redis://:***@r:6379"),
        ("http://h/x?token=abc&q=1", "http://h/x?token=***&q=1"),
    ],
)
def test_redact_text(text, expected):
    assert redact_text(text) == expected


# ----------------------------------------------------------------------------------------------------
# Cameras and health


@pytest.mark.parametrize(
    ("source", "stored"),
    [
        (None, None),
        ("rtsp://admin:hunter2@10.0.0.5/stream", "rtsp://admin:***@10.0.0.5/stream"),
        ("videos/cam0.mp4", "videos/cam0.mp4"),
        (0, "0"),
    ],
)
def test_upsert_camera_redacts_and_updates(store, source, stored):
    with store.session() as s:
        repo.upsert_camera(s, "cam0", "old-source", None)
        repo.upsert_camera(s, "cam0", source, T0)
        s.commit()
    with store.session() as s:
        row = s.get(CameraRow, "cam0")
        assert (row.source, row.start_time) == (stored, at(0))
        assert row.connected is None


@pytest.mark.parametrize(
    ("crop", "frame_size", "stored"),
    [
        ((428, 0, 768, 576), (340, 576), ([428, 0, 768, 576], 340, 576)),
        (np.array([0, 0, 340, 576]), np.array([340, 576]), ([0, 0, 340, 576], 340, 576)),  # NumPy integers
        (None, (768, 576), (None, 768, 576)),  # the whole frame
        (None, None, (None, None, None)),  # a live source before its first frame
    ],
)
def test_upsert_camera_stores_the_view_of_the_latest_run(store, crop, frame_size, stored):
    with store.session() as s:
        repo.upsert_camera(s, "cam0", "a.mp4", None, crop=[1, 2, 3, 4], frame_size=(2, 2))
        repo.upsert_camera(s, "cam0", "b.mp4", T0, crop=crop, frame_size=frame_size)
        s.commit()
    with store.session(readonly=True) as s:
        row = s.get(CameraRow, "cam0")
        assert (row.crop, row.frame_width, row.frame_height) == stored
        assert row.source == "b.mp4"
        # no crop is SQL NULL (what the documented "crop IS NULL" finds), not the JSON text 'null'
        is_null = s.execute(sa.text("SELECT crop IS NULL FROM cameras WHERE id = 'cam0'")).scalar_one()
        assert bool(is_null) == (crop is None)


@pytest.mark.parametrize(
    ("crop", "frame_size", "error"),
    [
        ([0, 0, 10], None, "crop"),
        ([0, 0, 10.0, 10], None, "crop"),
        ([0, 0, True, 10], None, "crop"),
        ("0,0,10,10", None, "crop"),
        (None, (0, 576), "frame_size"),
        (None, (340,), "frame_size"),
        (None, (340.0, 576), "frame_size"),
    ],
)
def test_upsert_camera_refuses_a_malformed_view(store, crop, frame_size, error):
    with store.session() as s, pytest.raises(ValueError, match=error):
        repo.upsert_camera(s, "cam0", "a.mp4", None, crop=crop, frame_size=frame_size)


def test_update_camera_health_overwrites(store):
    health = dict(reconnects=0, last_frame_time=None, frames=0, fps=None, last_error=None)
    with store.session() as s:
        repo.update_camera_health(s, "cam0", connected=True, now=T0, **health)
        repo.update_camera_health(
            s,
            "cam0",
            connected=False,
            reconnects=3,
            last_frame_time=at(9.5),
            frames=95,
            fps=9.9,
            last_error="read failed: rtsp://admin:hunter2@cam/x",
            now=T0 + 10,
        )
        s.commit()
    with store.session() as s:
        row = s.get(CameraRow, "cam0")
        got = (row.connected, row.reconnects, row.last_frame_time, row.frames, row.fps, row.last_error)
        assert got == (False, 3, at(9.5), 95, 9.9, "read failed: rtsp://admin:***@cam/x")
        assert row.updated_at == at(10)


def test_health_events_are_idempotent(store):
    with store.session() as s:
        assert repo.add_health_event(s, "cam0", event="error", time=T0, detail="x") is True
        assert repo.add_health_event(s, "cam0", event="error", time=T0, detail="changed") is False
        assert repo.add_health_event(s, "cam0", event="disconnected", time=T0) is True
        with pytest.raises(ValueError, match="event"):
            repo.add_health_event(s, "cam0", event="exploded", time=T0)
        s.commit()
        rows = s.execute(sa.text("SELECT event, detail FROM camera_health_events ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [("error", "x"), ("disconnected", None)]


# ----------------------------------------------------------------------------------------------------
# Tracklets


BASE_TRACKLET = dict(
    session_key="run1",
    camera_id="cam0",
    track_id=1,
    chunk=0,
    first_frame=0,
    last_frame=10,
    start_time=T0,
    end_time=T0 + 1,
    num_frames=11,
)


@pytest.mark.parametrize(
    ("change", "same_row"),
    [
        ({}, True),  # plain redelivery
        ({"last_frame": 99, "end_time": T0 + 9, "num_frames": 100}, True),  # same key: first write wins
        ({"session_key": "run2"}, False),  # the camera worker restarted: track ids start again
        ({"chunk": 1}, False),
        ({"track_id": 2}, False),
        ({"camera_id": "cam1"}, False),
    ],
)
def test_add_tracklet_is_idempotent_on_the_natural_key(store, change, same_row):
    with store.session() as s:
        first = repo.add_tracklet(s, **BASE_TRACKLET)
        second = repo.add_tracklet(s, **{**BASE_TRACKLET, **change})
        s.commit()
    assert (first == second) is same_row
    assert count(store, TrackletRow) == (1 if same_row else 2)
    with store.session() as s:
        row = s.get(TrackletRow, first)
        assert (row.last_frame, row.end_posix, row.num_frames) == (10, T0 + 1, 11)


@pytest.mark.parametrize(
    ("boxes", "summary"),
    [
        ([], (0, None, None, None, None)),
        ([[10, 20, 40, 100]], (1, 30.0, 80.0, [10.0, 20.0, 40.0, 100.0], [10.0, 20.0, 40.0, 100.0])),
        (
            [[0, 0, 10, 20], [5, 5, 25, 45.5]],
            (2, 15.0, 30.25, [0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 25.0, 45.5]),
        ),
    ],
)
def test_add_tracklet_summarises_boxes(store, boxes, summary):
    with store.session() as s:
        tid = repo.add_tracklet(s, **BASE_TRACKLET, boxes=np.array(boxes, np.float32).reshape(-1, 4))
        s.commit()
    with store.session() as s:
        row = s.get(TrackletRow, tid)
        assert (row.num_crops, row.mean_box_w, row.mean_box_h, row.first_box, row.last_box) == summary
        assert (row.start_time, row.end_time, row.start_posix) == (at(0), at(1), T0)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"end_time": T0 - 1}, ValueError),
        ({"last_frame": -1}, ValueError),
        ({"chunk": -1}, ValueError),
        ({"session_key": ""}, ValueError),
        ({"start_time": datetime(2024, 1, 1)}, ValueError),  # naive: zone unknown
        ({"start_time": float("nan")}, ValueError),
        ({"start_time": "2024-01-01"}, TypeError),
    ],
)
def test_add_tracklet_rejects_bad_fields(store, change, error):
    with store.session() as s, pytest.raises(error):
        repo.add_tracklet(s, **{**BASE_TRACKLET, **change})


def test_add_tracklet_accepts_aware_datetimes_in_any_zone(store):
    plus2 = timezone(timedelta(hours=2))
    with store.session() as s:
        tid = repo.add_tracklet(
            s, **{**BASE_TRACKLET, "start_time": at(0).astimezone(plus2), "end_time": at(1).astimezone(plus2)}
        )
        s.commit()
        row = s.get(TrackletRow, tid)
        assert (row.start_time, row.end_time, row.start_posix, row.end_posix) == (at(0), at(1), T0, T0 + 1)


def test_tracklet_and_embedding_messages_map_to_the_same_row(store):
    n = 3
    boxes = np.array([[0, 0, 10, 20], [1, 1, 11, 21], [2, 2, 12, 22]], np.float32)
    fields = dict(camera_id="cam0", track_id=4, chunk=1, first_frame=5, last_frame=9, start_time=T0)
    tracklet = Tracklet(
        **fields,
        end_time=T0 + 0.4,
        num_frames=5,
        frame_indices=np.arange(5, 5 + n),
        timestamps=T0 + np.arange(n) / 10,
        boxes=boxes,
        scores=np.ones(n, np.float32),
        crops=np.zeros((n, 8, 4, 3), np.uint8),
    )
    vector = np.zeros(16, np.float32)
    vector[3] = 1.0
    embedding = TrackletEmbedding(
        **fields, end_time=T0 + 0.4, num_frames=5, embedding=vector, part_visibility=np.ones(2), model="m"
    )
    with store.session() as s:
        first = repo.add_tracklet_from(s, tracklet, session_key="run1")
        assert repo.add_tracklet_from(s, embedding, session_key="run1") == first
        s.commit()
        row = s.get(TrackletRow, first)
        assert (row.track_id, row.chunk, row.num_frames, row.num_crops) == (4, 1, 5, 3)


def test_repository_functions_never_commit(store):
    with store.session() as s:
        tid = repo.add_tracklet(s, **BASE_TRACKLET)
        repo.add_embedding(s, tid, model="m", vector=[1.0, 0.0])
        repo.ensure_identity(s, 1, created_at=T0)
        repo.add_sighting(s, tid, 1, None, T0)
        repo.update_camera_health(
            s,
            "cam0",
            connected=True,
            reconnects=0,
            last_frame_time=None,
            frames=0,
            fps=None,
            last_error=None,
            now=T0,
        )
        repo.add_health_event(s, "cam0", event="error", time=T0)
        # no commit: leaving the block rolls everything back
    for table in (TrackletRow, EmbeddingRow, IdentityRow, SightingRow, CameraRow):
        assert count(store, table) == 0


# ----------------------------------------------------------------------------------------------------
# Embeddings and the gallery


def test_add_embedding_is_idempotent_and_checks_the_tracklet(store):
    with store.session() as s:
        tid = repo.add_tracklet(s, **BASE_TRACKLET)
        assert repo.add_embedding(s, tid, model="m", vector=[0.6, 0.8], part_visibility=[1.0]) is True
        assert repo.add_embedding(s, tid, model="m", vector=[1.0, 0.0]) is False
        assert repo.add_embedding(s, tid, model="other", vector=[0.0, 1.0, 0.0]) is True
        with pytest.raises(LookupError, match="tracklet"):
            repo.add_embedding(s, tid + 1000, model="m", vector=[1.0])
        for bad in ([], [[1.0, 0.0]], [float("inf")]):
            with pytest.raises(ValueError, match="vector"):
                repo.add_embedding(s, tid, model="m2", vector=bad)
        s.commit()
        row = s.get(EmbeddingRow, (tid, "m"))
        assert (row.dim, np.frombuffer(row.vector, "<f4").tolist()) == (2, [np.float32(0.6), np.float32(0.8)])


def test_load_gallery_of_an_empty_store(store):
    with store.session() as s:
        assert repo.load_gallery(s, "m") == []


def test_load_gallery_round_trips_vectors_exactly(store, scene):
    rng = np.random.default_rng(7)
    vectors = {}
    with store.session() as s:
        for name, tid in scene.items():
            v = rng.standard_normal(128).astype(np.float32)
            v /= np.linalg.norm(v)
            if name == "A1":  # awkward values: negative zero, a subnormal, the largest float32
                v[:3] = [-0.0, np.float32(1e-40), np.finfo(np.float32).max]
            vis = rng.uniform(0, 1, 6).astype(np.float32)
            vectors[tid] = (v, vis)
            repo.add_embedding(s, tid, model="m", vector=v, part_visibility=vis)
        repo.add_embedding(s, scene["A1"], model="other", vector=np.ones(4, np.float32) / 2)
        s.commit()
    with store.session(readonly=True) as s:
        gallery = repo.load_gallery(s, "m")
        other = repo.load_gallery(s, "other")
    order = ["A1", "B1", "C1", "A2", "B2", "A3"]  # by start time; U is unassigned
    assert [g.tracklet_id for g in gallery] == [scene[n] for n in order]
    assert [g.identity_id for g in gallery] == [SCENE[n][4] for n in order]
    for g, name in zip(gallery, order, strict=True):
        camera, _, start, end, _ = SCENE[name]
        assert (g.camera_id, g.start_time, g.end_time) == (camera, T0 + start, T0 + end)
        v, vis = vectors[g.tracklet_id]
        assert g.vector.dtype == np.float32 and g.vector.tobytes() == v.tobytes()
        assert g.part_visibility.tobytes() == vis.tobytes()
    assert [(g.tracklet_id, g.vector.tolist()) for g in other] == [(scene["A1"], [0.5] * 4)]


# ----------------------------------------------------------------------------------------------------
# Identities and sightings


def test_max_identity_id_and_ensure_identity(store):
    with store.session() as s:
        assert repo.max_identity_id(s) == 0
        assert repo.ensure_identity(s, 5, created_at=T0) is True
        assert repo.ensure_identity(s, 3, created_at=T0) is True
        assert repo.ensure_identity(s, 5, created_at=T0 + 99) is False
        assert repo.max_identity_id(s) == 5
        assert s.get(IdentityRow, 5).created_at == at(0)
        with pytest.raises(ValueError, match="identity_id"):
            repo.ensure_identity(s, -1, created_at=T0)


def test_add_sighting_is_idempotent(store):
    with store.session() as s:
        tid = add(s, "A", 1, 0, 10)
        other = add(s, "B", 1, 20, 30)
        repo.ensure_identity(s, 1, created_at=T0)
        repo.ensure_identity(s, 2, created_at=T0)
        assert repo.sighting_of(s, tid) is None
        assert repo.add_sighting(s, tid, 1, None, T0 + 10) == 1
        assert repo.sighting_of(s, tid) == 1
        assert repo.add_sighting(s, tid, 1, None, T0 + 10) == 1
        assert repo.add_sighting(s, tid, 2, 0.99, T0 + 20) == 1  # already decided: unchanged
        assert repo.add_sighting(s, other, 1, 0.7, T0 + 30) == 1
        with pytest.raises(LookupError, match="identity"):
            repo.add_sighting(s, add(s, "C", 1, 40, 50), 99, 0.5, T0)
        with pytest.raises(LookupError, match="tracklet"):
            repo.add_sighting(s, 10_000, 1, 0.5, T0)
        s.commit()
        row = s.get(SightingRow, tid)
        assert (row.identity_id, row.similarity, row.decided_at) == (1, None, at(10))
        ident = s.get(IdentityRow, 1)
        assert (ident.first_seen, ident.last_seen, ident.num_tracklets, ident.num_cameras) == (
            at(0),
            at(30),
            2,
            2,
        )
        empty = s.get(IdentityRow, 2)
        assert (empty.first_seen, empty.last_seen, empty.num_tracklets, empty.num_cameras) == (
            None,
            None,
            0,
            0,
        )
    assert count(store, SightingRow) == 2


def test_update_identity_stats_recomputes_and_checks_the_identity(store, scene):
    with store.session() as s:
        s.execute(sa.delete(SightingRow).where(SightingRow.tracklet_id == scene["C1"]))
        repo.update_identity_stats(s, 1)
        ident = s.get(IdentityRow, 1)
        assert (ident.first_seen, ident.last_seen, ident.num_tracklets, ident.num_cameras) == (
            at(0),
            at(50),
            2,
            2,
        )
        with pytest.raises(LookupError, match="identity"):
            repo.update_identity_stats(s, 404)


# ----------------------------------------------------------------------------------------------------
# Queries


def test_queries_on_an_empty_store(store):
    with store.session(readonly=True) as s:
        assert repo.timeline(s, 1) == []
        assert repo.list_identities(s) == []
        assert repo.passed_a_then_b(s, "A", "B", 60) == []
        assert repo.counts(s) == dict.fromkeys(TABLES - {"match_progress"}, 0)
        assert s.execute(sa.text("SELECT * FROM identity_timeline")).all() == []


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, ["A1", "B1", "C1"]),
        (5.0, 45.0, ["A1", "B1"]),
        (11.0, 39.0, []),  # between two sightings
        (210.0, None, ["C1"]),  # touching the end counts
        (None, -1.0, []),  # before everything
        (10.0, 10.0, ["A1"]),  # an instant
        (at(41).astimezone(timezone(timedelta(hours=-5))), None, ["B1", "C1"]),  # aware datetime, other zone
    ],
)
def test_timeline_filters_by_window(store, scene, since, until, expected):
    def when(x):
        return T0 + x if isinstance(x, float) else x

    with store.session(readonly=True) as s:
        rows = repo.timeline(
            s, 1, since=None if since is None else when(since), until=None if until is None else when(until)
        )
    assert [r.tracklet_id for r in rows] == [scene[n] for n in expected]
    for r, name in zip(rows, expected, strict=True):
        camera, _, start, end, identity = SCENE[name]
        assert (r.identity_id, r.camera_id, r.start_time, r.end_time) == (
            identity,
            camera,
            at(start),
            at(end),
        )


def test_timeline_of_unknown_identity_and_reversed_window(store, scene):
    with store.session(readonly=True) as s:
        assert repo.timeline(s, 404) == []
        with pytest.raises(ValueError, match="after"):
            repo.timeline(s, 1, since=T0 + 10, until=T0)


def test_counts(store, scene):
    with store.session(readonly=True) as s:
        assert repo.counts(s) == {
            "cameras": 3,
            "camera_health_events": 3,
            "tracklets": len(SCENE),
            "embeddings": 0,
            "identities": 3,
            "sightings": len(SCENE) - 1,
            "tracklet_pictures": 6,
            "tracklet_boxes": 0,
            "retired_identities": 0,
        }


def test_identity_timeline_view_rows(store, scene):
    with store.session(readonly=True) as s:
        rows = s.execute(
            sa.text(
                "SELECT identity_id, camera_id, tracklet_id, start_posix, end_posix, similarity"
                " FROM identity_timeline ORDER BY tracklet_id"
            )
        ).all()
    expected = [
        (identity, camera, scene[name], T0 + start, T0 + end, None if name == "A1" else 0.8)
        for name, (camera, _, start, end, identity) in SCENE.items()
        if identity is not None
    ]
    assert [tuple(r) for r in rows] == expected


@pytest.mark.parametrize(
    ("min_cameras", "expected"),
    [(1, [1, 2, 3]), (2, [1, 2]), (3, [1]), (4, [])],
)
def test_list_identities_by_number_of_cameras(store, scene, min_cameras, expected):
    with store.session(readonly=True) as s:
        rows = repo.list_identities(s, min_cameras=min_cameras)
    assert [r.identity_id for r in rows] == expected
    summaries = {
        1: repo.IdentitySummary(1, at(0), at(210), 3, ("A", "B", "C")),
        2: repo.IdentitySummary(2, at(1000), at(1110), 2, ("A", "B")),
        3: repo.IdentitySummary(3, at(2000), at(2005), 1, ("A",)),
    }
    assert rows == [summaries[i] for i in expected]


def test_list_identities_rejects_zero_cameras(store):
    with store.session() as s, pytest.raises(ValueError, match="min_cameras"):
        repo.list_identities(s, min_cameras=0)


@pytest.mark.parametrize(
    ("camera_a", "camera_b", "within_s", "expected"),
    [
        ("A", "B", 60.0, [(1, "A1", "B1", 30.0)]),
        ("A", "B", 30.0, [(1, "A1", "B1", 30.0)]),  # bound inclusive
        ("A", "B", 29.9, []),
        ("A", "B", 0.0, []),
        ("A", "B", 90.0, [(1, "A1", "B1", 30.0), (2, "A2", "B2", 90.0)]),
        ("B", "A", 1e6, []),  # nobody went from B to A
        ("A", "C", 190.0, [(1, "A1", "C1", 190.0)]),
        ("A", "C", 189.0, []),
        ("B", "C", 150.0, [(1, "B1", "C1", 150.0)]),
    ],
)
def test_passed_a_then_b(store, scene, camera_a, camera_b, within_s, expected):
    with store.session(readonly=True) as s:
        rows = repo.passed_a_then_b(s, camera_a, camera_b, within_s)
    assert [(r.identity_id, r.tracklet_a, r.tracklet_b, r.gap_s) for r in rows] == [
        (i, scene[a], scene[b], gap) for i, a, b, gap in expected
    ]
    for r, (_, a, b, _) in zip(rows, expected, strict=True):
        assert (r.left_a, r.entered_b) == (at(SCENE[a][3]), at(SCENE[b][2]))


def test_passed_a_then_b_gives_one_row_per_passage_of_chunked_tracks(store):
    # A in three chunks, B in two chunks, then back to A and on to B again 100 s later; B overlaps A once.
    with store.session() as s:
        pieces = [("A", 0, 0, 10), ("A", 1, 10, 20), ("A", 2, 20, 30), ("B", 0, 45, 55), ("B", 1, 55, 65)]
        ids = [add(s, cam, 1, start, end, chunk=chunk) for cam, chunk, start, end in pieces]
        ids.append(add(s, "A", 2, 300, 310))
        ids.append(add(s, "B", 2, 305, 320))  # overlapping views: enters B before leaving A
        for tid in ids:
            assign(s, tid, 1)
        s.commit()
        rows = repo.passed_a_then_b(s, "A", "B", 60)
    assert [(r.tracklet_a, r.tracklet_b, r.gap_s) for r in rows] == [
        (ids[2], ids[3], 15.0),
        (ids[5], ids[6], -5.0),
    ]


@pytest.mark.parametrize(
    ("camera_a", "camera_b", "within_s"),
    [("A", "A", 60.0), ("", "B", 60.0), ("A", "B", -1.0), ("A", "B", float("nan"))],
)
def test_passed_a_then_b_rejects_bad_arguments(store, camera_a, camera_b, within_s):
    with store.session() as s, pytest.raises(ValueError):
        repo.passed_a_then_b(s, camera_a, camera_b, within_s)


# ----------------------------------------------------------------------------------------------------
# The schema document


def doc_examples() -> dict[str, str]:
    text = (REPO / "docs" / "schema.md").read_text()
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"<!-- example: (\w+) -->\s*```sql\n(.*?)```", text, flags=re.DOTALL)
    }


def test_the_document_shows_exactly_the_tested_queries():
    assert doc_examples() == {name: sql.strip() for name, sql in queries.EXAMPLES.items()}
    assert len(queries.EXAMPLES) == 7


# name -> (parameters, expected rows: the first column(s) the check compares)
DOC_RUNS = {
    "identity_between": ({"identity_id": 1, "since": at(5), "until": at(45)}, lambda ids: [("A",), ("B",)]),
    "camera_between": ({"camera_id": "A", "since": at(0), "until": at(2002)}, lambda ids: [(1,), (2,), (3,)]),
    "passed_a_then_b": (
        {"camera_a": "A", "camera_b": "B", "within_s": 60},
        lambda ids: [(1, ids["A1"], ids["B1"])],
    ),
    "multi_camera_identities": ({"min_cameras": 2}, lambda ids: [(1, 3, 3), (2, 2, 2)]),
    "camera_outages": ({}, lambda ids: [("A",), ("B",)]),
    "cameras_down": ({}, lambda ids: [("B",)]),
    "identity_pictures": (
        {"identity_id": 1},
        lambda ids: [(ids["A1"], "A"), (ids["B1"], "B"), (ids["C1"], "C")],
    ),
}


@pytest.mark.parametrize("name", list(queries.EXAMPLES))
def test_document_examples_run(store, scene, name):
    params, expected = DOC_RUNS[name]
    stmt = sa.text(doc_examples()[name])
    stmt = stmt.bindparams(
        *(sa.bindparam(k, type_=UTCDateTime()) for k, v in params.items() if isinstance(v, datetime))
    )
    with store.session(readonly=True) as s:
        rows = s.execute(stmt, params).all()
    want = expected(scene)
    assert [tuple(r)[: len(want[0])] for r in rows] == want


def test_document_outage_example_pairs_reconnections(store, scene):
    with store.session(readonly=True) as s:
        rows = s.execute(
            sa.text(queries.CAMERA_OUTAGES).columns(
                camera_id=sa.Text(),
                disconnected_at=UTCDateTime(),
                reconnected_at=UTCDateTime(),
                detail=sa.Text(),
            )
        ).all()
    assert [tuple(r) for r in rows] == [("A", at(100), at(160), "timeout"), ("B", at(3900), None, None)]


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        *((f"storage.{m}", "pipeline") for m in ("boxes", "db", "models", "queries", "repository")),
        *((f"pipeline.matching.{m}", "storage") for m in ("topology", "gallery", "matcher", "ordering")),
    ],
)
def test_no_import_runs_back(module: str, forbidden: str) -> None:
    """The store never imports the pipeline; the matching logic never imports the store (a fresh interpreter,
    so that nothing this test session imported earlier hides an import)."""
    code = (
        f"import sys, {module}; "
        f"print(sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden!r} + '.')))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", f"{module} imports {run.stdout.strip()}"
