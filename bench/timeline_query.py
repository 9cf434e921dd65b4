"""Timeline query on PostgreSQL: milliseconds for "where was identity X between two times" at 1M and 10M sightings.

    python bench/timeline_query.py [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]
                                   [--sizes 1000000 10000000] [--queries 200] [--seed 0] [--fk-triggers]

Everything happens in a schema of its own (``bench_timeline_<random hex>``), created and migrated by
``storage.db.open_store(url, schema=...)`` and dropped at the end, also after an error, Ctrl-C or SIGTERM.

Data, made server-side (``INSERT ... SELECT FROM generate_series``) in the tables the migrations built:
8 cameras; tracklets whose ids follow time, one every 0.25 s on average from 2024-05-01 (1M tracklets span
2.9 days, 10M span 29 days), lasting 2-30 s, each with a camera-day ``session_key``, frame numbers at 10 fps
and boxes; identities of exactly 20 sightings each, one sighting per tracklet. Identities come in blocks of
1000 over 20 000 consecutive tracklets (83 minutes): each identity has one sighting in each 1000-tracklet
stripe of its block (about every 4 minutes, the camera moving on by one each time) at a pseudo-random place
in the stripe, so sightings of different identities interleave as they would in a building. Identity
statistics (``first_seen`` ...) are filled as the pipeline would. The sizes grow in the same schema (fill 1M,
measure, add 9M, measure) and must be multiples of 20 000 so that no identity straddles two fills. Each fill
ends with ``ANALYZE``. Every constraint and index is live during the fill; only the per-row foreign-key
triggers are skipped (``session_replication_role = replica``, when the login is a superuser), which halves
the fill time: each 1M-row chunk then checks its references itself with anti-joins before it commits.
``--fk-triggers`` keeps the triggers.

Queries: ``--queries`` random sightings; for each, its identity and a 1-hour window placed at random so that
it contains that sighting's start (the operator asks about a time when the person was around; the window
holds about 10 of the identity's 20 sightings). Timed, in ms per query, median and p95:

- ``timeline`` (the headline figures): ``storage.repository.timeline(session, identity_id, since, until)``
  in a new ``store.session(readonly=True)`` per query, rows turned into ``TimelineEntry``, as
  ``run_pipeline.py query`` does once the store is open: pool checkout (with its pre-ping), BEGIN, query,
  rows, ROLLBACK. Second pass over the sample, so its pages are cached; ``1st pass`` is the first one.
- ``one session``: the same calls in one open session (no checkout, pre-ping or transaction per query).
- ``raw SQL``: ``storage.queries.IDENTITY_BETWEEN`` (the document's example) through ``sqlalchemy.text`` in
  one open session.

Then ``EXPLAIN (ANALYZE, BUFFERS)`` of the exact statement and parameters ``repository.timeline`` sent (caught
with a ``before_cursor_execute`` hook). A table, then as the last line one JSON object (medians
``timeline_ms_1m``, ``timeline_ms_10m``, their ``_p95``, the other timings, fill and ANALYZE seconds).

PostgreSQL unreachable: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sqlalchemy as sa  # noqa: E402

from common.redact import redact_url  # noqa: E402
from storage import queries  # noqa: E402
from storage import repository as repo  # noqa: E402
from storage.db import Store, open_store  # noqa: E402
from storage.models import UTCDateTime  # noqa: E402

DEFAULT_URL = os.environ.get("REID_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
GOAL_MS = 50.0

# The synthetic world. Tracklet id i+1 is the i-th tracklet in time.
T0 = datetime(2024, 5, 1, tzinfo=UTC).timestamp()
DT_S = 0.25  # mean seconds between consecutive tracklets (all cameras together)
CAMERAS = 8
FPS = 10
PER_IDENTITY = 20  # sightings of each identity
BLOCK_IDS = 1000  # identities per block
BLOCK = PER_IDENTITY * BLOCK_IDS  # tracklets per block
FILL_CHUNK = 50 * BLOCK  # tracklets per INSERT statement (1M): progress lines, bounded transactions
WINDOW_S = 3600.0

# SQL expressions of tracklet id ``id``: position j in its block, stripe k (= sighting number of its
# identity), identity id. (7919 j + 389 k) mod 1000 is a bijection of j mod 1000 for each k, so every
# identity of a block gets exactly one tracklet per stripe.
_J = f"((id - 1) % {BLOCK})"
_K = f"({_J} / {BLOCK_IDS})"
_LOCAL = f"((7919 * ({_J} % {BLOCK_IDS}) + 389 * {_K}) % {BLOCK_IDS})"
_IDENTITY = f"(((id - 1) / {BLOCK}) * {BLOCK_IDS} + {_LOCAL})::integer"

CAMERAS_SQL = f"""
INSERT INTO cameras (id, source, start_time, connected, reconnects, frames, fps)
SELECT 'cam' || c, 'rtsp://cam' || c || '.bench/stream', to_timestamp({T0}), true, 0, 0, {FPS}
FROM generate_series(0, {CAMERAS - 1}) AS c
"""

# One row per id in [:lo, :hi]; the innermost subquery draws the random numbers once per row (volatile
# functions keep it from being flattened into the outer query).
TRACKLETS_SQL = f"""
INSERT INTO tracklets (id, camera_id, session_key, track_id, chunk, first_frame, last_frame,
                       start_time, end_time, start_posix, end_posix, num_frames, num_crops,
                       mean_box_w, mean_box_h, first_box, last_box)
SELECT id, cam, cam || '/' || to_char(to_timestamp(day0), 'YYYYMMDD'), id, 0, f0, f1,
       to_timestamp(s), to_timestamp(e), s, e, (f1 - f0)::integer + 1, least(16, (f1 - f0)::integer + 1),
       bw, 2.4 * bw,
       json_build_array(round(x), round(y), round(x + bw), round(y + 2.4 * bw)),
       json_build_array(round(x2), round(y), round(x2 + bw), round(y + 2.4 * bw))
FROM (
    SELECT *, floor((s - day0) * {FPS})::bigint AS f0, floor((e - day0) * {FPS})::bigint AS f1
    FROM (
        SELECT *, s + dur AS e
        FROM (
            SELECT id,
                   'cam' || (({_LOCAL} * 5 + {_K}) % {CAMERAS}) AS cam,
                   {T0} + (id - 1 + random()) * {DT_S} AS s,
                   2 + 28 * random() ^ 2 AS dur,
                   {T0} + floor(((id - 1) * {DT_S}) / 86400) * 86400 AS day0,
                   40 + 60 * random() AS bw, 1600 * random() AS x, 1600 * random() AS x2,
                   500 * random() AS y
            FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS id
        ) AS drawn
    ) AS timed
) AS framed
"""

# The ids of a fill are whole blocks, so every identity here is new and complete.
IDENTITIES_SQL = f"""
INSERT INTO identities (id, created_at, first_seen, last_seen, num_tracklets, num_cameras)
SELECT identity, min(end_time) + interval '2 seconds', min(start_time), max(end_time), count(*),
       count(DISTINCT camera_id)
FROM (SELECT {_IDENTITY} AS identity, camera_id, start_time, end_time
      FROM tracklets WHERE id BETWEEN :lo AND :hi) AS t
GROUP BY identity
"""

# The first sighting of an identity founded it (similarity NULL); the matcher decides 2 s after the end.
SIGHTINGS_SQL = f"""
INSERT INTO sightings (tracklet_id, identity_id, similarity, decided_at)
SELECT id, {_IDENTITY}, CASE WHEN {_K} = 0 THEN NULL ELSE 0.55 + 0.4 * random() END,
       end_time + interval '2 seconds'
FROM tracklets WHERE id BETWEEN :lo AND :hi
"""

# What the skipped foreign-key triggers would have checked, for one chunk: references without a target,
# and tracklets without their one sighting.
VERIFY_SQL = """
SELECT (SELECT count(*) FROM tracklets t WHERE t.id BETWEEN :lo AND :hi
          AND NOT EXISTS (SELECT 1 FROM cameras c WHERE c.id = t.camera_id)) AS tracklet_camera,
       (SELECT count(*) FROM sightings s WHERE s.tracklet_id BETWEEN :lo AND :hi
          AND NOT EXISTS (SELECT 1 FROM tracklets t WHERE t.id = s.tracklet_id)) AS sighting_tracklet,
       (SELECT count(*) FROM sightings s WHERE s.tracklet_id BETWEEN :lo AND :hi
          AND NOT EXISTS (SELECT 1 FROM identities i WHERE i.id = s.identity_id)) AS sighting_identity,
       (SELECT count(*) FROM tracklets t WHERE t.id BETWEEN :lo AND :hi
          AND NOT EXISTS (SELECT 1 FROM sightings s WHERE s.tracklet_id = t.id)) AS tracklet_unsighted
"""

SEQUENCE_SQL = "SELECT setval(pg_get_serial_sequence('tracklets', 'id'), :last)"

IDENTITY_BETWEEN = sa.text(queries.IDENTITY_BETWEEN).bindparams(
    sa.bindparam("identity_id", type_=sa.Integer()),
    sa.bindparam("since", type_=UTCDateTime()),
    sa.bindparam("until", type_=UTCDateTime()),
)


@dataclass(frozen=True)
class Probe:
    """One timed question: identity ``identity_id`` over ``[since, until]`` (aware UTC)."""

    identity_id: int
    since: datetime
    until: datetime


@dataclass(frozen=True)
class Timing:
    """Milliseconds per query over one pass: median, 95th percentile, and mean rows returned."""

    median_ms: float
    p95_ms: float
    mean_rows: float


@dataclass(frozen=True)
class SizeResult:
    """What one size measured: fill seconds, the four timings (see the module docstring) and the plan."""

    sightings: int
    fill_s: float
    first: Timing
    warm: Timing
    one_session: Timing
    raw: Timing
    plan: str


def _timing(ms: list[float], rows: list[int]) -> Timing:
    ordered = sorted(ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Timing(statistics.median(ordered), p95, statistics.fmean(rows))


def _label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def _say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------------
# Schema life cycle


def unreachable(url: str) -> str | None:
    """Why PostgreSQL at ``url`` cannot be used (one line, password redacted), or None if it answers."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except sa.exc.OperationalError as e:
        return f"PostgreSQL at {redact_url(url)} is unreachable ({' '.join(str(e.orig).split())})"
    finally:
        engine.dispose()


def _drop_schema(url: str, schema: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        engine.dispose()


@contextmanager
def bench_store(url: str) -> Iterator[Store]:
    """A migrated store in a new schema ``bench_timeline_<hex>``, dropped on the way out whatever happens
    (SIGTERM is turned into SystemExit so that this cleanup runs then too)."""
    schema = f"bench_timeline_{uuid.uuid4().hex[:12]}"
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    store = None
    try:
        store = open_store(url, schema=schema)
        _say(f"schema {schema} on {store.url} (revision {store.revision()})")
        yield store
    finally:
        if store is not None:
            store.dispose()  # closes our connections, so nothing of ours holds a lock on the schema
        # Ctrl-C again while dropping would leave the schema: ignore it for this last statement.
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _drop_schema(url, schema)
            _say(f"schema {schema} dropped")
        finally:
            signal.signal(signal.SIGINT, sigint)
            signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------------------------------
# Fill


def fill(store: Store, start: int, stop: int, *, seed: float, fk_triggers: bool) -> dict[str, float]:
    """Add tracklets ``start+1 .. stop`` with their identities and sightings, then ANALYZE. ``seed`` in
    [-1, 1] seeds the server's ``random()``.

    ``fk_triggers=False`` (a superuser only) runs each chunk with ``session_replication_role = replica``,
    which skips the per-row foreign-key triggers (more than half the insert time); the chunk's references
    are then checked by :data:`VERIFY_SQL` before it commits, so the data satisfy every constraint either
    way. Returns seconds spent: ``insert_s`` (the INSERTs and checks of every chunk) and ``analyze_s``.
    """
    insert_s = 0.0
    with store.engine.connect() as conn:
        conn.execute(sa.text("SELECT setseed(:seed)"), {"seed": seed})
        if start == 0:
            conn.execute(sa.text(CAMERAS_SQL))
            conn.commit()
        for lo in range(start + 1, stop + 1, FILL_CHUNK):
            hi = min(stop, lo + FILL_CHUNK - 1)
            bounds = {"lo": lo, "hi": hi}
            t0 = time.perf_counter()
            # SET LOCAL: both end with the transaction, so the pooled connection goes back unchanged.
            # Losing the last commits in a server crash is fine: the schema is dropped anyway.
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            if not fk_triggers:
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            conn.execute(sa.text(TRACKLETS_SQL), bounds)
            t1 = time.perf_counter()
            conn.execute(sa.text(IDENTITIES_SQL), bounds)
            t2 = time.perf_counter()
            conn.execute(sa.text(SIGHTINGS_SQL), bounds)
            t3 = time.perf_counter()
            if not fk_triggers:
                bad = conn.execute(sa.text(VERIFY_SQL), bounds).one()._asdict()
                if any(bad.values()):
                    raise RuntimeError(f"fill of tracklets {lo}..{hi} breaks a foreign key: {bad}")
            conn.commit()
            t4 = time.perf_counter()
            insert_s += t4 - t0
            _say(
                f"  tracklets {lo:>10,}..{hi:>10,}: tracklets {t1 - t0:5.1f} s, identities {t2 - t1:4.1f} s, "
                f"sightings {t3 - t2:5.1f} s, FK check {t4 - t3:4.1f} s  "
                f"({hi - start:,} rows in {insert_s:.0f} s)"
            )
        conn.execute(sa.text(SEQUENCE_SQL), {"last": stop})
        conn.commit()
        t0 = time.perf_counter()
        conn.exec_driver_sql("ANALYZE cameras, tracklets, identities, sightings")
        conn.commit()
        analyze_s = time.perf_counter() - t0
    _say(f"  ANALYZE {analyze_s:.1f} s")
    return {"insert_s": insert_s, "analyze_s": analyze_s}


def can_skip_fk_triggers(store: Store) -> bool:
    """Whether this login may set ``session_replication_role`` (superusers only)."""
    with store.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT current_setting('is_superuser')").scalar() == "on"


def table_sizes(store: Store) -> dict[str, int]:
    """Rows and megabytes (tables with their indexes) of what the bench filled."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'"
            )
        ).all()
    return {name: round(size / 2**20) for name, size in rows if size > 2**20}


# ----------------------------------------------------------------------------------------------------
# Queries


def probes(store: Store, n_tracklets: int, count: int, rng: random.Random) -> list[Probe]:
    """``count`` questions: random sightings, each giving an identity and a 1-hour window that contains
    the sighting's start at a random place."""
    picks = [rng.randint(1, n_tracklets) for _ in range(count)]
    with store.session(readonly=True) as s:
        rows = s.execute(
            sa.text(
                "SELECT tracklet_id, identity_id, start_posix FROM identity_timeline "
                "WHERE tracklet_id = ANY(:ids)"
            ),
            {"ids": picks},
        )
        found = {t: (i, start) for t, i, start in rows}
    out = []
    for t in picks:
        identity_id, start = found[t]
        since = start - rng.uniform(0.0, WINDOW_S)
        out.append(
            Probe(
                int(identity_id),
                datetime.fromtimestamp(since, UTC),
                datetime.fromtimestamp(since + WINDOW_S, UTC),
            )
        )
    return out


def time_pass(run: Callable[[Probe], int], sample: list[Probe]) -> Timing:
    ms, rows = [], []
    for p in sample:
        t0 = time.perf_counter()
        n = run(p)
        ms.append(1000.0 * (time.perf_counter() - t0))
        rows.append(n)
    return _timing(ms, rows)


def timeline_call(store: Store) -> Callable[[Probe], int]:
    """One query as the CLI runs it: a new read-only session, ``repository.timeline``, rows as objects."""

    def run(p: Probe) -> int:
        with store.session(readonly=True) as s:
            return len(repo.timeline(s, p.identity_id, p.since, p.until))

    return run


def measure_in_session(store: Store, sample: list[Probe], *, raw: bool) -> Timing:
    """All of ``sample`` in one open session, after one warm-up pass: ``repository.timeline``, or with
    ``raw`` the document's SQL (``queries.IDENTITY_BETWEEN``) through ``sqlalchemy.text``."""
    with store.session(readonly=True) as s:

        def run(p: Probe) -> int:
            if raw:
                params = {"identity_id": p.identity_id, "since": p.since, "until": p.until}
                return len(s.execute(IDENTITY_BETWEEN, params).all())
            return len(repo.timeline(s, p.identity_id, p.since, p.until))

        time_pass(run, sample)
        return time_pass(run, sample)


def explain_timeline(store: Store, p: Probe) -> list[str]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the statement ``repository.timeline`` sends for ``p``, with the
    same parameters (caught on its way to the driver)."""
    caught: list[tuple[str, object]] = []

    def catch(conn, cursor, statement, parameters, context, executemany):
        caught.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", catch)
    try:
        with store.session(readonly=True) as s:
            repo.timeline(s, p.identity_id, p.since, p.until)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", catch)
    statement, parameters = next((st, pa) for st, pa in caught if "identity_timeline" in st)
    with store.engine.connect() as conn:
        cur = conn.connection.dbapi_connection.cursor()
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        plan = [row[0] for row in cur.fetchall()]
        cur.close()
        conn.rollback()
    return plan


def plan_summary(plan: list[str]) -> str:
    """The scan nodes of ``plan`` (which index or sequential scan read which table) and the execution time."""
    nodes = [line.strip().lstrip("-> ").split("  (")[0] for line in plan if " Scan " in line]
    total = next((line.strip() for line in plan if line.startswith("Execution Time")), "")
    return "; ".join(nodes) + f"; {total}"


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=DEFAULT_URL, help=f"PostgreSQL URL (default: {redact_url(DEFAULT_URL)})")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="sightings")
    ap.add_argument("--queries", type=int, default=200, help="timed queries per size and pass")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fk-triggers",
        action="store_true",
        help="keep the per-row foreign-key triggers on while filling (slower; the default skips them "
        "when the login is a superuser and checks the references itself)",
    )
    args = ap.parse_args(argv)
    sizes = args.sizes
    if any(n <= 0 or n % BLOCK for n in sizes) or sizes != sorted(set(sizes)):
        ap.error(f"--sizes: expected increasing multiples of {BLOCK}, got {sizes}")
    if args.queries < 1:
        ap.error(f"--queries: expected >= 1, got {args.queries}")
    if not sa.make_url(args.url).get_backend_name() == "postgresql":
        ap.error(f"--url: expected a postgresql:// URL, got {redact_url(args.url)}")
    if reason := unreachable(args.url):
        print(f"skipped: {reason}", file=sys.stderr)
        return 2

    rng = random.Random(args.seed)
    results: dict[str, object] = {
        "queries": args.queries,
        "window_s": WINDOW_S,
        "goal_ms": GOAL_MS,
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
    }
    lines: list[SizeResult] = []
    with bench_store(args.url) as store:
        with store.engine.connect() as conn:
            results["server"] = conn.exec_driver_sql("SHOW server_version").scalar()
            results["shared_buffers"] = conn.exec_driver_sql("SHOW shared_buffers").scalar()
        fk_triggers = args.fk_triggers or not can_skip_fk_triggers(store)
        results["fill_fk_triggers"] = fk_triggers
        _say(
            "fill with per-row foreign-key triggers"
            if fk_triggers
            else "fill without per-row foreign-key triggers (session_replication_role = replica), "
            "references checked per chunk"
        )
        have = 0
        for n in sizes:
            label = _label(n)
            _say(f"fill {have:,} -> {n:,} sightings")
            t0 = time.perf_counter()
            spent = fill(store, have, n, seed=rng.uniform(-1.0, 1.0), fk_triggers=fk_triggers)
            fill_s = time.perf_counter() - t0
            have = n
            _say(f"  sizes MB: {table_sizes(store)}")

            sample = probes(store, n, args.queries, rng)
            call = timeline_call(store)
            first = time_pass(call, sample)
            warm = time_pass(call, sample)
            same = measure_in_session(store, sample, raw=False)
            raw = measure_in_session(store, sample, raw=True)
            plan = explain_timeline(store, sample[0])
            _say(f"EXPLAIN (ANALYZE, BUFFERS) of repository.timeline at {n:,} sightings:")
            for line in plan:
                _say("    " + line)
            summary = plan_summary(plan)
            lines.append(SizeResult(n, fill_s, first, warm, same, raw, summary))
            results.update(
                {
                    f"timeline_ms_{label}": round(warm.median_ms, 3),
                    f"timeline_ms_{label}_p95": round(warm.p95_ms, 3),
                    f"timeline_first_pass_ms_{label}": round(first.median_ms, 3),
                    f"timeline_first_pass_ms_{label}_p95": round(first.p95_ms, 3),
                    f"timeline_one_session_ms_{label}": round(same.median_ms, 3),
                    f"timeline_one_session_ms_{label}_p95": round(same.p95_ms, 3),
                    f"raw_sql_ms_{label}": round(raw.median_ms, 3),
                    f"raw_sql_ms_{label}_p95": round(raw.p95_ms, 3),
                    f"rows_per_query_{label}": round(warm.mean_rows, 2),
                    f"fill_s_{label}": round(fill_s, 1),
                    f"fill_insert_s_{label}": round(spent["insert_s"], 1),
                    f"analyze_s_{label}": round(spent["analyze_s"], 1),
                    f"plan_{label}": summary,
                    f"load_avg_1min_{label}": round(os.getloadavg()[0], 2),
                }
            )

    print()
    print("ms per query, median / p95; timeline = repository.timeline in a new session per query (warm pass)")
    print(
        f"{'sightings':>11} {'fill s':>7} {'timeline':>15} {'1st pass':>15} {'one session':>15} "
        f"{'raw SQL':>15} {'rows':>5} {'goal':>5}"
    )
    for r in lines:
        cells = " ".join(
            f"{f'{t.median_ms:.2f} / {t.p95_ms:.2f}':>15}" for t in (r.warm, r.first, r.one_session, r.raw)
        )
        ok = "ok" if r.warm.p95_ms <= GOAL_MS else "SLOW"
        print(f"{r.sightings:>11,} {r.fill_s:>7.1f} {cells} {r.warm.mean_rows:>5.1f} {ok:>5}")
    for r in lines:
        print(f"plan at {r.sightings:,}: {r.plan}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        print("interrupted (bench schema dropped)", file=sys.stderr)
        raise SystemExit(130) from None
