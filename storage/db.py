"""Opening the store: engine, connection settings, migrations, sessions.

``open_store(url)`` is the one entry point: it creates the engine, brings the schema to the latest Alembic
revision (idempotent; safe when several processes start at once) and returns a :class:`Store` whose
``session()`` the caller's worker loop uses and commits. Passwords never appear in logs or errors: every URL
shown goes through :func:`common.redact.redact_url`, every driver message through
:func:`common.redact.redact_text` with the URL's own secrets.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, exc, pool, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

from common.redact import redact_text, redact_url, url_secrets

__all__ = [
    "MIGRATIONS_DIR",
    "Store",
    "StoreError",
    "alembic_config",
    "open_store",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30.0
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# Alembic keeps its running migration in process-global proxies (alembic.context, alembic.op): two threads
# migrating at once, even different databases, would mix them up. Taken before any database lock.
_ALEMBIC_LOCK = threading.Lock()
# Execution option read by the SQLite "begin" hook: True = plain deferred BEGIN (readers), else IMMEDIATE.
_SQLITE_DEFERRED = "reid_sqlite_deferred"


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message is one line and holds no password."""


def _one_line(text_: str, secrets: list[str]) -> str:
    return " ".join(redact_text(text_, secrets).split())


def alembic_config() -> Config:
    """An Alembic ``Config`` for the store's migrations, without any ``alembic.ini`` on disk.

    For development commands such as ``command.revision(alembic_config(), "add x", autogenerate=True)``
    (set the ``sqlalchemy.url`` main option first for those that connect). ``open_store`` migrates by itself.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


class Store:
    """An open store: the engine plus a session factory. Made by :func:`open_store`.

    ``url`` is the redacted URL (safe to log); ``schema`` the PostgreSQL schema everything lives in (None =
    the server's default search path).
    """

    def __init__(self, engine: Engine, *, url: str, schema: str | None) -> None:
        self.engine = engine
        self.url = url
        self.schema = schema
        self._writer = sessionmaker(engine, expire_on_commit=False)
        self._reader = sessionmaker(
            engine.execution_options(**{_SQLITE_DEFERRED: True}), expire_on_commit=False
        )

    def __repr__(self) -> str:
        return f"Store({self.url!r}, schema={self.schema!r})"

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A new ``Session``; the caller commits (``session.commit()``), anything uncommitted is rolled back
        when the block ends, also on an exception.

        On SQLite a session's transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock at once,
        so concurrent writers wait for ``busy_timeout`` instead of failing on a stale snapshot);
        ``readonly=True`` uses a plain deferred ``BEGIN`` for queries that must not block writers. On
        PostgreSQL both are ordinary READ COMMITTED transactions; ``readonly`` enforces nothing.
        """
        with (self._reader if readonly else self._writer)() as session:
            yield session

    def revision(self) -> str | None:
        """The Alembic revision the database is at (None before any migration)."""
        with self.engine.execution_options(**{_SQLITE_DEFERRED: True}).connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def dispose(self) -> None:
        """Close every pooled connection. The store can still be used afterwards (it reconnects)."""
        self.engine.dispose()


def open_store(url: str, *, schema: str | None = None) -> Store:
    """Open the store at SQLAlchemy ``url`` and migrate its schema to the latest revision.

    ``url``: ``sqlite:///path.db`` (the default store) or ``postgresql+psycopg://user:pw@host/db``; a bare
    ``postgresql://`` uses psycopg (version 3), the driver this project installs. ``schema`` (PostgreSQL
    only): a schema name (letters, digits, ``_``) that is created if missing and set as the search path of
    every connection, so tables, the view and raw SQL all live in it.

    Migrating is idempotent and serialised: on PostgreSQL by a transaction-level advisory lock keyed by the
    schema, on SQLite by ``BEGIN IMMEDIATE``; several processes may call this at once.

    SQLite connections get ``journal_mode=WAL``, ``foreign_keys=ON`` and a 30 s busy timeout.

    Raises ``StoreError`` (one line, URL redacted) when the URL is malformed, the driver is missing, the
    server is unreachable or the database is at a revision this code does not know.
    """
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    try:
        parsed = make_url(url)
    except (exc.ArgumentError, TypeError, ValueError):
        raise StoreError(f"cannot open store {shown}: not an SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"cannot open store {shown}: unsupported database {backend!r} (use sqlite or postgresql)"
        )
    if schema is not None:
        if backend != "postgresql":
            raise StoreError(f"cannot open store {shown}: schema={schema!r} needs PostgreSQL")
        if not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(f"cannot open store {shown}: schema {schema!r} is not a plain identifier")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")

    engine = None
    try:
        if schema is not None:
            _create_schema(parsed, schema)
        engine = _engine(parsed, schema)
        _migrate(engine, schema)
        store = Store(engine, url=shown, schema=schema)
        revision = store.revision()
    except (exc.SQLAlchemyError, CommandError, ImportError) as e:
        if engine is not None:
            engine.dispose()
        reason = getattr(e, "orig", None) or e
        raise StoreError(
            f"cannot open store {shown}: {type(reason).__name__}: {_one_line(str(reason), url_secrets(url))}"
        ) from None
    log.info("store %s%s at revision %s", shown, f" (schema {schema})" if schema else "", revision)
    return store


def _engine(url: URL, schema: str | None) -> Engine:
    if url.get_backend_name() == "sqlite":
        memory = url.database in (None, "", ":memory:")
        engine = create_engine(
            url,
            connect_args={
                "timeout": SQLITE_BUSY_TIMEOUT_S,
                **({"check_same_thread": False} if memory else {}),
            },
            # One shared connection, or every connection would see its own empty in-memory database.
            poolclass=pool.StaticPool if memory else None,
        )
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(url, pool_pre_ping=True)
    if schema is not None:
        event.listen(engine, "connect", _search_path(schema), insert=True)
    return engine


def _sqlite_connect(dbapi_conn, _record) -> None:
    # pysqlite's own transaction handling does not BEGIN before DDL and cannot BEGIN IMMEDIATE: switch it
    # off and let _sqlite_begin emit BEGIN (the recipe of SQLAlchemy's SQLite dialect documentation).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cur.execute("PRAGMA foreign_keys = ON")
    # Switching a new database to WAL needs an exclusive lock, and SQLite may answer "database is locked" at
    # once, without its busy handler, while another process is switching it too: retry for the busy timeout.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_SQLITE_DEFERRED) else "BEGIN IMMEDIATE")


def _search_path(schema: str):
    def set_search_path(dbapi_conn, _record) -> None:
        # At connect time, before SQLAlchemy's first-connect setup reads current_schema().
        autocommit = dbapi_conn.autocommit
        dbapi_conn.autocommit = True
        with dbapi_conn.cursor() as cur:
            cur.execute(f'SET search_path TO "{schema}"')
        dbapi_conn.autocommit = autocommit

    return set_search_path


def _lock_key(schema: str | None) -> int:
    """A signed 64-bit advisory-lock key for migrating ``schema`` (the same in every process)."""
    digest = hashlib.blake2b(f"reid-store-migrate:{schema or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _create_schema(url: URL, schema: str) -> None:
    # A connection without the search path (the schema may not exist yet); the lock makes concurrent
    # CREATE SCHEMA IF NOT EXISTS safe (on its own it can fail with a duplicate key in pg_namespace).
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(schema)})
            conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        engine.dispose()


def _migrate(engine: Engine, schema: str | None) -> None:
    """``alembic upgrade head`` inside one transaction that holds the migration lock (other processes wait
    for it; on PostgreSQL the DDL commits or rolls back as a whole)."""
    cfg = alembic_config()
    with _ALEMBIC_LOCK, engine.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(schema)})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
