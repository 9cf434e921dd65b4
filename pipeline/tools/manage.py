"""Operator commands on the store: forget a person, apply retention, export MOT files with global ids.

Each is a function (usable from Python) and a sub-command::

    python -m pipeline.tools.manage forget --db URL --identity ID [--redis URL --stream NAME ...]
    python -m pipeline.tools.manage prune  --db URL (--days N | --before ISO-TIME) [--redis URL --stream NAME ...]
    python -m pipeline.tools.manage export --db URL --format mot --out DIR [--camera ID]

(``run_pipeline.py forget|prune|query export`` map to the same parsers.) Exit status 0 on success; 2 for a
bad argument or an unknown identity or camera, with a one-line message on stderr.

``forget`` deletes every row of the person in every table and retires the id (docs/schema.md, "Forgetting a
person, and retention"); a running matcher drops it from its gallery within seconds (it polls
``retired_identities``) and the store refuses it anyway, so the person is never matched to that id again.
With ``--redis``, the stream entries (and dead letters) that still carry one of the person's tracklets,
crops and pictures included, are deleted too (``XDEL``). ``prune`` deletes what ended before the cutoff
(wall clock: ``now - days``, or ``--before``); with ``--redis``, the entries published before the cutoff
(``XTRIM MINID``). The streams to clean are given by name, ``<queue.stream_prefix>:tracklets`` and
``<queue.stream_prefix>:embeddings`` in a standard deployment; each one's ``<stream>:dead`` is cleaned too.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack
import sqlalchemy as sa

from common.redact import redact_text, redact_url
from pipeline.camera.mot_io import write_mot
from pipeline.tools.query import parse_time
from pipeline.transport.queues import dead_letter_stream
from storage import repository as repo
from storage.db import Store, open_store
from storage.models import TrackletRow

__all__ = [
    "ExportedFile",
    "StreamCleanup",
    "export_mot",
    "forget",
    "main",
    "parser",
    "prune",
    "purge_stream_entries",
    "trim_streams_before",
]

_SCAN_PAGE = 500  # stream entries read per XRANGE
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")

TrackletKey = tuple[str, str, int, int]  # (session_key, camera_id, track_id, chunk)


# ----------------------------------------------------------------------------------------------------
# Redis streams


@dataclass(frozen=True)
class StreamCleanup:
    """Entries deleted per stream name (dead-letter streams included)."""

    deleted: dict[str, int]


def _message_key(payload: bytes) -> TrackletKey | None:
    """The tracklet a wire message (pipeline.transport.wire, v1) is about, or None (progress markers and
    anything unreadable). Reads the four key fields of the msgpack map only: no JPEG is decoded."""
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if not isinstance(msg, dict) or msg.get("type") not in ("tracklet", "embedding"):
            return None
        return (str(msg["session"]), str(msg["camera_id"]), int(msg["track_id"]), int(msg["chunk"]))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None


def _with_dead_letters(streams: Iterable[str]) -> list[str]:
    return [name for s in streams for name in (s, dead_letter_stream(s))]


def purge_stream_entries(client, streams: Sequence[str], keys: Iterable[TrackletKey]) -> StreamCleanup:
    """Delete (``XDEL``) every entry of ``streams`` and their dead-letter streams whose message is about one
    of the tracklets ``keys``. ``client`` is a ``redis.Redis``. Reads each stream once, in pages."""
    wanted = set(keys)
    deleted: dict[str, int] = {}
    if not wanted:
        return StreamCleanup(deleted)
    for stream in _with_dead_letters(streams):
        start, n = "-", 0
        while True:
            page = client.xrange(stream, min=start, max="+", count=_SCAN_PAGE)
            if not page:
                break
            doomed = []
            for entry_id, fields in page:
                payload = fields.get(b"data") if fields else None
                if payload is not None and _message_key(payload) in wanted:
                    doomed.append(entry_id)
            if doomed:
                n += int(client.xdel(stream, *doomed))
            if len(page) < _SCAN_PAGE:
                break
            last = page[-1][0].decode() if isinstance(page[-1][0], bytes) else str(page[-1][0])
            start = "(" + last  # exclusive: after the last entry read
        deleted[stream] = n
    return StreamCleanup(deleted)


def trim_streams_before(client, streams: Sequence[str], cutoff: datetime) -> StreamCleanup:
    """``XTRIM MINID``: delete the entries of ``streams`` (and their dead letters) published before
    ``cutoff`` (stream ids are publication times in ms). A tracklet is published after it ends, so these
    carry only tracklets that ended before ``cutoff`` too."""
    minid = f"{int(cutoff.timestamp() * 1000)}-0"
    return StreamCleanup({s: int(client.xtrim(s, minid=minid)) for s in _with_dead_letters(streams)})


def _redis(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


# ----------------------------------------------------------------------------------------------------
# forget, prune, export


def _keys_of_identity(session, identity_id: int) -> dict[int, TrackletKey]:
    """Tracklet id -> natural key (what the queue messages name a tracklet by) of ``identity_id``'s."""
    ids = [r.tracklet_id for r in repo.timeline(session, identity_id)]
    t = TrackletRow.__table__
    out: dict[int, TrackletKey] = {}
    for i in range(0, len(ids), 500):
        rows = session.execute(
            sa.select(t.c.id, t.c.session_key, t.c.camera_id, t.c.track_id, t.c.chunk).where(
                t.c.id.in_(ids[i : i + 500])
            )
        )
        out.update({int(r.id): (r.session_key, r.camera_id, int(r.track_id), int(r.chunk)) for r in rows})
    return out


def forget(
    store: Store, identity_id: int, *, redis_client=None, streams: Sequence[str] = ()
) -> tuple[repo.ForgetReport, StreamCleanup | None]:
    """Forget identity ``identity_id`` (:func:`storage.repository.forget_identity`, committed) and, with a
    ``redis_client``, delete the entries of ``streams`` that carry its tracklets (after the commit: an entry
    re-read meanwhile would only give the matcher a tracklet of an unknown person). Raises
    ``LookupError`` for an id that never existed."""
    for _ in range(5):
        with store.session() as s:
            keys = _keys_of_identity(s, identity_id)
            report = repo.forget_identity(s, identity_id)  # locks the identity, then deletes
            if set(report.tracklet_ids) <= set(keys):
                s.commit()
                break
            # a matcher added a sighting between our read and the lock: read the keys again
    else:
        raise RuntimeError(f"identity {identity_id} kept gaining sightings while being forgotten; try again")
    cleanup = purge_stream_entries(redis_client, streams, keys.values()) if redis_client is not None else None
    return report, cleanup


def prune(
    store: Store, cutoff: datetime, *, redis_client=None, streams: Sequence[str] = ()
) -> tuple[repo.PruneReport, StreamCleanup | None]:
    """Retention now: :func:`storage.repository.prune_before` ``cutoff``, committed; with a
    ``redis_client``, the entries of ``streams`` published before ``cutoff`` are deleted too."""
    with store.session() as s:
        report = repo.prune_before(s, cutoff)
        s.commit()
    cleanup = trim_streams_before(redis_client, streams, cutoff) if redis_client is not None else None
    return report, cleanup


@dataclass(frozen=True)
class ExportedFile:
    """One MOT file: camera ``camera_id``'s run ``session_key`` with ``rows`` lines, written to ``path``."""

    camera_id: str
    session_key: str
    path: Path
    rows: int


def export_mot(store: Store, out: Path, *, camera_id: str | None = None) -> list[ExportedFile]:
    """Write one MOTChallenge file per camera and camera worker run (frame indices restart per run), ids =
    global identities (:func:`storage.repository.mot_rows`): ``<camera>.txt`` for a camera with one run,
    ``<camera>-<k>.txt`` (k = 1, 2, ... by the run's first tracklet) with several. Every camera with a
    sighting, or only ``camera_id`` (``LookupError`` if it has no tracklet)."""
    with store.session(readonly=True) as s:
        if camera_id is None:
            cameras = sorted({c for i in repo.list_identities(s) for c in i.cameras})
        else:
            cameras = [camera_id]
        plan = [(c, repo.camera_runs(s, c)) for c in cameras]
        if camera_id is not None and not plan[0][1]:
            raise LookupError(f"no tracklets of camera {camera_id!r} in the store")
        out.mkdir(parents=True, exist_ok=True)
        written: list[ExportedFile] = []
        for cam, runs in plan:
            for k, run in enumerate(runs, 1):
                rows = repo.mot_rows(s, cam, run)
                name = _SAFE.sub("_", cam) + ("" if len(runs) == 1 else f"-{k}")
                path = out / f"{name}.txt"
                write_mot(path, rows)
                written.append(ExportedFile(cam, run, path, int(rows.shape[0])))
    return written


# ----------------------------------------------------------------------------------------------------
# Command line


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLAlchemy URL of the store, e.g. sqlite:///reid.db")
    p.add_argument("--schema", default=None, help="PostgreSQL schema of the store (default: the search path)")


def _add_streams(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", default=None, help="Redis URL whose streams are cleaned too")
    p.add_argument(
        "--stream",
        action="append",
        default=[],
        help="a stream to clean (repeat; e.g. reid:tracklets and reid:embeddings); its :dead stream too",
    )


def parser(prog: str = "python -m pipeline.tools.manage") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Forget people, apply retention, export MOT files.")
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("forget", help="delete every row and picture of one identity; its id is never reused")
    _add_db(f)
    f.add_argument("--identity", type=int, required=True, help="the identity id")
    _add_streams(f)
    p = sub.add_parser("prune", help="delete what ended before a cutoff (retention)")
    _add_db(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--days", type=float, help="keep this many days before now (wall clock)")
    when.add_argument("--before", help="ISO 8601 cutoff, e.g. 2024-05-01T00:00:00Z (no offset: UTC)")
    _add_streams(p)
    e = sub.add_parser("export", help="MOT files whose ids are global identities, one per camera and run")
    _add_db(e)
    e.add_argument("--format", choices=["mot"], required=True, help="the output format (mot)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--camera", default=None, help="only this camera")
    return ap


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(redact_text(message).split())}", file=sys.stderr)
    return 2


def _print_deleted(deleted: dict[str, int]) -> None:
    for table, n in sorted(deleted.items()):
        print(f"  {table:<22} {n:>8}")


def run(args: argparse.Namespace, prog: str = "manage") -> int:
    """Run parsed arguments of :func:`parser`; returns the exit status."""
    prog = f"{prog} {args.command}"
    if getattr(args, "stream", None) and not args.redis:
        return _fail(prog, "--stream needs --redis")
    if args.command == "prune":
        if args.days is not None and not (math.isfinite(args.days) and args.days > 0):
            return _fail(prog, f"--days: expected a number of days > 0, got {args.days}")
        try:
            cutoff = (
                datetime.now(UTC) - timedelta(days=args.days)
                if args.days is not None
                else parse_time(args.before, "--before")
            )
        except ValueError as err:
            return _fail(prog, str(err))
    store = open_store(args.db, schema=args.schema)
    client = _redis(args.redis) if getattr(args, "redis", None) else None
    try:
        if args.command == "forget":
            try:
                report, cleanup = forget(store, args.identity, redis_client=client, streams=args.stream)
            except (LookupError, ValueError) as err:
                return _fail(prog, str(err))
            if report.already_retired:
                print(f"identity {args.identity} was already forgotten or pruned: nothing left to delete")
            else:
                print(
                    f"forgot identity {args.identity}: {len(report.tracklet_ids)} tracklet(s); rows deleted:"
                )
                _print_deleted(report.deleted)
        elif args.command == "prune":
            report, cleanup = prune(store, cutoff, redis_client=client, streams=args.stream)
            print(
                f"pruned before {report.cutoff.isoformat()}: {len(report.tracklet_ids)} tracklet(s), "
                f"{len(report.identity_ids)} identit(ies) retired, {len(report.updated_identity_ids)} kept "
                "with fewer sightings; rows deleted:"
            )
            _print_deleted(report.deleted)
        else:
            cleanup = None
            try:
                files = export_mot(store, Path(args.out), camera_id=args.camera)
            except LookupError as err:
                return _fail(prog, str(err))
            for f in files:
                print(f"{f.path}  camera {f.camera_id}  run {f.session_key}  {f.rows} rows")
            print(f"({len(files)} file(s))")
        if cleanup is not None:
            print(f"stream entries deleted ({redact_url(args.redis)}):")
            _print_deleted(cleanup.deleted)
    finally:
        store.dispose()
        if client is not None:
            client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
