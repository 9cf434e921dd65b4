"""Shared test fixtures: where ../shared lives, and skips with a reason when it or a service is absent."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("REID_SHARED", REPO.parent / "shared"))
REDIS_URL = os.environ.get("REID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("REID_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@functools.cache
def redis_unreachable() -> str | None:
    """None when the test Redis answers a PING, else the reason (for pytest.skip)."""
    import redis

    from common.redact import redact_url

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
        return None
    except redis.RedisError as err:
        return f"Redis is not reachable at {redact_url(REDIS_URL)} ({type(err).__name__}: {err})"
    finally:
        client.close()


@functools.cache
def pg_unreachable() -> str | None:
    """None when the test PostgreSQL accepts a connection, else the reason (for pytest.skip)."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except sa.exc.OperationalError as e:
        reason = " ".join(str(e.orig).split())
        return f"PostgreSQL at {sa.make_url(PG_URL).render_as_string()} is unreachable ({reason})"
    finally:
        engine.dispose()


def shared_path(rel: str) -> Path:
    """Path under ../shared, or skip the calling test with the reason that it is absent."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"needs {p} (the team's shared assets/data folder), which is absent here")
    return p


@pytest.fixture
def pku_root() -> Path:
    return shared_path("data/pku-reid")


@pytest.fixture
def osnet_msmt17() -> Path:
    return shared_path("assets/reid/osnet_x0_25/osnet_x0_25_msmt17.pth")


@pytest.fixture(autouse=True)
def _no_flushed_denormals_after_a_test():
    """Entry points called in-process (``main([...])``) run ``models.runtime.configure_torch``, which makes
    the whole process flush denormal floats to zero; later tests (hypothesis' float strategies) must not
    inherit that, so it is switched back off after every test."""
    yield
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)
