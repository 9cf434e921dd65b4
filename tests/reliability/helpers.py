"""Helpers of the full-pipeline fault tests: the run under test, a private Redis, the demo config, SQL checks.

Every process is started in a session (process group) of its own, so a test can always end all it started,
also when it fails half-way; fixtures in ``conftest.py`` do that at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import PG_URL, REPO, shared_path

CAMERAS = ("room-a", "plaza")
TrackletKey = tuple[str, int, int]  # (camera_id, track_id, chunk), unique within one run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def need_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs the {name} binary, which is not installed here")
    return path


def wait_for(
    predicate: Callable[[], bool], timeout_s: float, what: str, *, alive: Proc | None = None
) -> None:
    """Poll ``predicate`` every 0.2 s; fail naming ``what`` after ``timeout_s``, or at once when ``alive``
    (the run under test) has exited first."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if alive is not None and alive.poll() is not None:
            pytest.fail(
                f"the run exited ({alive.poll()}) before {what}; its stderr ends: {alive.stderr()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------- processes


class Proc:
    """A command in a process group of its own, its output in files (a full pipe would stall it)."""

    def __init__(self, args: Sequence[str], log_dir: Path, name: str, *, cwd: Path = REPO) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.out_path, self.err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                list(args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
            )
        self.pgid = self.popen.pid  # start_new_session: the leader's pid is the group id

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout_s: float) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{self.name} did not exit within {timeout_s:g} s; its stderr ends: {self.stderr()[-3000:]}"
            )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the leader only (the pipeline's parent decides what its children do)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill_group(self) -> None:
        """SIGKILL the whole group (the leader and everything it spawned), then reap the leader."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def pipeline_args(cfg: Path, db_url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "run_pipeline.py",
        "--cameras",
        str(cfg),
        "--db",
        db_url,
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


class RedisServer:
    """A private ``redis-server`` on a free port whose data (AOF, ``appendfsync always``) lives in ``dir``.

    ``stop()`` is a clean shutdown (SIGTERM, wait); ``start()`` again serves the same data on the same port.
    """

    def __init__(self, directory: Path) -> None:
        self.binary = need_binary("redis-server")
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout_s: float = 15.0) -> None:
        import redis

        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = open(self.dir / f"redis-{self.starts}.log", "wb")
        with log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                 "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"private redis-server on port {self.port} did not come up")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM and wait: Redis flushes the AOF and exits; clients see their connections close."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)


class StreamServer:
    """ffmpeg serving a video in real time, looped, as MPEG-TS over HTTP on 127.0.0.1 (``-listen 1``: one
    client per process, so a restart is a new process on the same port), as ``tests/test_sources.py`` does."""

    def __init__(self, video: Path) -> None:
        self.ffmpeg = need_binary("ffmpeg")
        self.video = video
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/live.ts"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        cmd = [
            self.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
            "-re", "-stream_loop", "-1", "-i", str(self.video),
            "-an", "-c:v", "mpeg2video", "-q:v", "5", "-g", "10",
            "-f", "mpegts", "-listen", "1", self.url,
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------- PostgreSQL


def admin_engine() -> sa.Engine:
    """An AUTOCOMMIT engine on the test database (tests/conftest.PG_URL), outside any test schema."""
    url = sa.make_url(PG_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")


def terminate_backends(application_name: str) -> int:
    """Terminate every backend of this database whose application_name is exactly ``application_name``;
    returns how many were terminated."""
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name = :app"
                    ),
                    {"app": application_name},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def terminate_writer(application_name: str, pattern: str, *, within_s: float, until=None) -> int:
    """Wait up to ``within_s`` (or until ``until()`` is true) for a backend of ``application_name`` that is
    inside a writing transaction whose latest statement matches the regular expression ``pattern``, and
    terminate it there: the transaction is lost mid-way, as when the server dies under it. Returns how many
    were terminated (0: none was caught)."""
    engine = admin_engine()
    deadline = time.monotonic() + within_s
    try:
        with engine.connect() as conn:
            while time.monotonic() < deadline and not (until is not None and until()):
                n = conn.execute(
                    sa.text(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                        "AND application_name = :app AND backend_xid IS NOT NULL "
                        "AND state IN ('active', 'idle in transaction') AND query ~* :pattern"
                    ),
                    {"app": application_name, "pattern": pattern},
                ).scalar_one()
                if n:
                    return int(n)
                time.sleep(0.002)
    finally:
        engine.dispose()
    return 0


def backends(application_name: str) -> int:
    """How many backends of this database have application_name ``application_name``."""
    engine = admin_engine()
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = :app"
                    ),
                    {"app": application_name},
                ).scalar_one()
            )
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------- config


def demo_config(
    tmp_path: Path,
    *,
    prefix: str = "reid",
    realtime: bool = False,
    cameras: str | None = None,
    extra: str = "",
    tracklets: str = "{max_crops: 8, max_gap: 10}",
) -> Path:
    """A short 2-camera config like ``tests/test_pipeline_e2e.demo_config`` (room-a and plaza replayed from
    ``../shared``); ``cameras`` replaces the camera list (YAML items), ``extra`` adds top-level sections."""
    det = shared_path("assets/detectors/yolo11n_int8_openvino_model")
    if cameras is None:
        room_a = shared_path("data/intel-sample-videos/one-by-one-person-detection.mp4")
        plaza = shared_path("data/vtest/vtest.avi")
        cameras = (
            f'  - {{id: room-a, source: "{room_a}", start_time: "2024-05-14T09:00:00Z"}}\n'
            f'  - {{id: plaza, source: "{plaza}", start_time: "2024-05-14T09:00:05Z"}}\n'
        )
        extra = (
            "topology:\n  links: [{cameras: [room-a, plaza], min_transit_s: 10, max_transit_s: 600}]\n"
            + extra
        )
    p = tmp_path / "cams.yaml"
    p.write_text(
        "cameras:\n"
        + cameras
        + f'detector: {{weights: "{det}", conf: 0.35}}\n'
        + f"tracklets: {tracklets}\n"
        + f"replay: {{realtime: {'true' if realtime else 'false'}}}\n"
        + f'queue: {{stream_prefix: "{prefix}"}}\n'
        + extra
    )
    return p


# ---------------------------------------------------------------------------------------- SQL checks


def written_tracklets(out_dir: Path, cameras: Iterable[str] = CAMERAS) -> list[TrackletKey]:
    """The keys of every tracklet the cameras wrote to ``<out>/<camera>_tracklets.jsonl`` (the file is a
    record of what was published; it is renamed into place only when the camera stage ended normally)."""
    keys: list[TrackletKey] = []
    for cid in cameras:
        path = out_dir / f"{cid}_tracklets.jsonl"
        assert path.exists(), f"{path.name} missing: the camera stage did not end normally"
        for line in path.read_text().splitlines():
            t = json.loads(line)
            keys.append((t["camera"], int(t["track_id"]), int(t["chunk"])))
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"the cameras wrote these tracklets more than once: {dupes}"
    return keys


def _scalar(conn: sa.Connection, sql: str) -> int:
    return int(conn.execute(sa.text(sql)).scalar_one())


def table_counts(db_url: str) -> dict[str, int]:
    """Rows per table of the store at ``db_url`` (a fresh connection; the pipeline's own URL is fine)."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return {
                t: _scalar(conn, f"SELECT count(*) FROM {t}")
                for t in (
                    "cameras",
                    "camera_health_events",
                    "tracklets",
                    "embeddings",
                    "identities",
                    "sightings",
                )
            }
    finally:
        engine.dispose()


def sql_tracklet_count(db_url: str) -> int:
    """How many tracklets are in SQL; 0 while the schema does not exist yet."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return _scalar(conn, "SELECT count(*) FROM tracklets")
    except sa.exc.SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def camera_health(db_url: str) -> dict[str, dict]:
    """The ``cameras`` rows (latest health per camera, as the camera worker last reported it), by id; empty
    while the schema does not exist yet."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, connected, reconnects, frames FROM cameras")).all()
    except sa.exc.SQLAlchemyError:
        return {}
    finally:
        engine.dispose()
    return {r.id: {"connected": r.connected, "reconnects": r.reconnects, "frames": r.frames} for r in rows}


def health_events(db_url: str, camera_id: str) -> list[tuple[float, str]]:
    """``(POSIX time, event)`` of ``camera_id`` from ``camera_health_events``, oldest first."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT time, event FROM camera_health_events WHERE camera_id = :c ORDER BY time, id"
                ),
                {"c": camera_id},
            ).all()
    finally:
        engine.dispose()
    return [(_posix(r.time), r.event) for r in rows]


def check_store(db_url: str, written: Iterable[TrackletKey]) -> dict[str, int]:
    """Every tracklet the cameras wrote is in SQL exactly once, and the store is consistent.

    - the tracklet keys in SQL are exactly ``written``, each once;
    - every tracklet has exactly one embedding and exactly one sighting;
    - no embedding or sighting without its tracklet, no sighting of an unknown identity, no identity
      without a sighting;
    - each identity's statistics (tracklets, cameras, first and last seen) agree with its sightings.

    Returns the row count of every table.
    """
    expected = Counter(written)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            stored = Counter(
                (r.camera_id, int(r.track_id), int(r.chunk))
                for r in conn.execute(sa.text("SELECT camera_id, track_id, chunk FROM tracklets"))
            )
            problems = {
                "tracklets with != 1 embedding": _scalar(
                    conn,
                    "SELECT count(*) FROM tracklets t WHERE "
                    "(SELECT count(*) FROM embeddings e WHERE e.tracklet_id = t.id) <> 1",
                ),
                "tracklets with != 1 sighting": _scalar(
                    conn,
                    "SELECT count(*) FROM tracklets t WHERE "
                    "(SELECT count(*) FROM sightings s WHERE s.tracklet_id = t.id) <> 1",
                ),
                "embeddings without tracklet": _scalar(
                    conn,
                    "SELECT count(*) FROM embeddings e LEFT JOIN tracklets t ON t.id = e.tracklet_id "
                    "WHERE t.id IS NULL",
                ),
                "sightings without tracklet": _scalar(
                    conn,
                    "SELECT count(*) FROM sightings s LEFT JOIN tracklets t ON t.id = s.tracklet_id "
                    "WHERE t.id IS NULL",
                ),
                "sightings of unknown identity": _scalar(
                    conn,
                    "SELECT count(*) FROM sightings s LEFT JOIN identities i ON i.id = s.identity_id "
                    "WHERE i.id IS NULL",
                ),
                "identities without sighting": _scalar(
                    conn,
                    "SELECT count(*) FROM identities i WHERE NOT EXISTS "
                    "(SELECT 1 FROM sightings s WHERE s.identity_id = i.id)",
                ),
                "identities whose stats disagree with their sightings": _scalar(
                    conn,
                    "SELECT count(*) FROM identities i JOIN ("
                    "  SELECT s.identity_id, count(*) AS n, count(DISTINCT t.camera_id) AS cams"
                    "  FROM sightings s JOIN tracklets t ON t.id = s.tracklet_id GROUP BY s.identity_id"
                    ") agg ON agg.identity_id = i.id "
                    "WHERE i.num_tracklets <> agg.n OR i.num_cameras <> agg.cams "
                    "OR i.first_seen IS NULL OR i.last_seen IS NULL",
                ),
            }
            # first/last seen against the tracklets' POSIX times, compared here: SQLite keeps text times
            first_last = conn.execute(
                sa.text(
                    "SELECT i.id, i.first_seen, i.last_seen, min(t.start_posix) AS first_p, "
                    "max(t.end_posix) AS last_p FROM identities i JOIN sightings s ON s.identity_id = i.id "
                    "JOIN tracklets t ON t.id = s.tracklet_id GROUP BY i.id, i.first_seen, i.last_seen"
                )
            ).all()
        counts = table_counts(db_url)
    finally:
        engine.dispose()
    missing = sorted((expected - stored).elements())
    extra = sorted((stored - expected).elements())
    repeated = sorted(k for k, n in stored.items() if n > 1)
    assert not missing, f"{len(missing)} tracklet(s) the cameras wrote are not in SQL: {missing[:20]}"
    assert not extra, f"{len(extra)} tracklet(s) in SQL that the cameras never wrote: {extra[:20]}"
    assert not repeated, f"tracklets stored more than once: {repeated[:20]}"
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    for row in first_last:
        assert (
            abs(_posix(row.first_seen) - row.first_p) < 1e-3
            and abs(_posix(row.last_seen) - row.last_p) < 1e-3
        ), f"identity {row.id}: first/last seen {row.first_seen}..{row.last_seen} disagree with its sightings"
    assert counts["tracklets"] == sum(expected.values())
    return counts


def _posix(value) -> float:
    """A timestamp column as POSIX seconds: PostgreSQL gives an aware datetime, SQLite UTC text."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
