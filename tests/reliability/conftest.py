"""Fixtures of the full-pipeline fault tests; each ends what it started, also when the test fails."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import PG_URL, pg_unreachable, shared_path
from tests.reliability.helpers import Proc, RedisServer, StreamServer, admin_engine, terminate_backends


@pytest.fixture
def start_proc(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """``start_proc(args, name)``: a command in a process group of its own, output in ``tmp_path/logs``;
    every group started is SIGKILLed at teardown (a no-op for those that exited)."""
    started: list[Proc] = []

    def start(args, name: str) -> Proc:
        proc = Proc(args, tmp_path / "logs", name)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill_group()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A running private redis-server (AOF, fsync always) that the test may stop and start again."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@dataclass(frozen=True)
class PgStore:
    url: str  # what the run under test gets: its own schema, and its own application_name
    probe_url: str  # the same schema under another application_name, for the test's own queries
    schema: str
    application_name: str


@pytest.fixture
def pg_store() -> Iterator[PgStore]:
    """A PostgreSQL schema of this test's own (dropped afterwards) and URLs that select it."""
    if reason := pg_unreachable():
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:10]
    schema, app = f"rel_{tag}", f"reid-rel-{tag}"
    base = sa.make_url(PG_URL)
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+psycopg")

    def url(application_name: str) -> str:
        u = base.update_query_dict(
            {"options": f"-csearch_path={schema}", "application_name": application_name}
        )
        return u.render_as_string(hide_password=False)

    engine = admin_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield PgStore(url(app), url(f"{app}-probe"), schema, app)
    finally:
        terminate_backends(app)  # a run that is still connected would block the DROP
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


@pytest.fixture
def stream_server() -> Iterator[StreamServer]:
    """ffmpeg serving vtest.avi, looped, on a free port of 127.0.0.1 (``start()`` it; restarts are new
    processes on the same port); every ffmpeg it started is killed at teardown."""
    server = StreamServer(shared_path("data/vtest/vtest.avi"))
    yield server
    server.kill_all()
