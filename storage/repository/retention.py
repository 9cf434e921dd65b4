"""Forgetting a person and retention: deleting an identity or every tracklet older than a cutoff with
every row that refers to them, and retiring the identity ids so that they are never handed out again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import Base, IdentityRow, RetiredIdentityRow, SightingRow, TrackletRow
from storage.repository._common import Instant, _insert, _posix, _utc, log
from storage.repository.identities import is_retired, update_identity_stats

_CHUNK = 500  # ids per IN (...) list: well below SQLite's and PostgreSQL's parameter limits


@dataclass(frozen=True)
class ForgetReport:
    """What :func:`forget_identity` deleted: the identity, its tracklets (drop them and the identity from a
    running matcher's gallery) and the rows deleted per table (``deleted``, table name -> rows).
    ``already_retired``: the id had been forgotten or pruned before; nothing was left to delete."""

    identity_id: int
    tracklet_ids: tuple[int, ...]
    deleted: dict[str, int]
    already_retired: bool = False


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune_before` deleted: every tracklet that ended before ``cutoff`` (with its rows in every
    table), ``identity_ids`` the identities left without any sighting (deleted and retired), and
    ``updated_identity_ids`` those that lost some tracklets but keep others (statistics refreshed). A running
    matcher drops ``tracklet_ids`` and ``identity_ids`` from its gallery. ``deleted``: rows per table."""

    cutoff: datetime
    tracklet_ids: tuple[int, ...]
    identity_ids: tuple[int, ...]
    updated_identity_ids: tuple[int, ...]
    deleted: dict[str, int]


def _referencing(column: sa.Column) -> list[sa.Column]:
    """Every column of the schema with a foreign key to ``column``, children first. Read from the metadata,
    so a table added later is deleted with what it refers to without changing this module."""
    found = [
        fk.parent
        for table in reversed(Base.metadata.sorted_tables)
        for fk in table.foreign_keys
        if fk.column is column
    ]
    return found


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _delete_where_in(session: Session, column: sa.Column, ids: list[int], deleted: dict[str, int]) -> None:
    for part in _chunks(ids):
        n = session.execute(sa.delete(column.table).where(column.in_(part))).rowcount
        deleted[column.table.name] = deleted.get(column.table.name, 0) + max(int(n or 0), 0)


def _delete_tracklets(session: Session, ids: list[int], deleted: dict[str, int]) -> None:
    """Delete tracklets ``ids`` and every row that refers to them (embeddings, sightings, pictures, boxes,
    and whatever a later table adds). The cascades would do it too; deleting explicitly counts the rows and
    does not depend on SQLite's ``foreign_keys`` pragma."""
    tracklet_id = TrackletRow.__table__.c.id
    for column in _referencing(tracklet_id):
        _delete_where_in(session, column, ids, deleted)
    _delete_where_in(session, tracklet_id, ids, deleted)


def _delete_identities(
    session: Session, ids: list[int], reason: str, now: datetime, deleted: dict[str, int]
) -> None:
    """Delete identities ``ids`` (and any row still referring to them) and retire their ids."""
    identity_id = IdentityRow.__table__.c.id
    for column in _referencing(identity_id):
        _delete_where_in(session, column, ids, deleted)
    _delete_where_in(session, identity_id, ids, deleted)
    retired = RetiredIdentityRow.__table__
    for part in _chunks(ids):
        session.execute(
            _insert(session, retired)
            .values([{"identity_id": i, "reason": reason, "retired_at": now} for i in part])
            .on_conflict_do_nothing(index_elements=["identity_id"])
        )


def _lock_identities(session: Session, ids: list[int]) -> list[int]:
    """Lock the rows of identities ``ids`` against a concurrent matcher (PostgreSQL ``FOR UPDATE``, in id
    order; SQLite already serialises writers) and return those that exist."""
    identities = IdentityRow.__table__
    found: list[int] = []
    for part in _chunks(sorted(ids)):
        found += [
            int(i)
            for i in session.execute(
                sa.select(identities.c.id)
                .where(identities.c.id.in_(part))
                .order_by(identities.c.id)
                .with_for_update()
            ).scalars()
        ]
    return found


def forget_identity(session: Session, identity_id: int, *, now: Instant | None = None) -> ForgetReport:
    """Delete every row of identity ``identity_id``: its sightings, its tracklets with their embeddings,
    pictures and boxes (every table that refers to a tracklet), and the identity itself; then retire the id
    (``retired_identities``, reason ``'forgotten'``, at ``now``, default the current time) so that it is
    never handed out again (:func:`max_identity_id` counts it, :func:`ensure_identity` refuses it).

    Idempotent: forgetting a retired id deletes nothing and says ``already_retired``. Raises
    ``LookupError`` for an id that never existed. On PostgreSQL the identity row is locked first, so a
    matcher adding a sighting to it at the same time either commits before (and its tracklet is deleted
    too) or fails afterwards. Never commits.
    """
    if isinstance(identity_id, bool) or int(identity_id) != identity_id or identity_id < 0:
        raise ValueError(f"identity_id: expected an integer >= 0, got {identity_id!r}")
    identity_id = int(identity_id)
    when = datetime.now(UTC) if now is None else _utc(now, "now")
    if not _lock_identities(session, [identity_id]):
        if is_retired(session, identity_id):
            return ForgetReport(identity_id, (), {}, already_retired=True)
        raise LookupError(f"forget_identity: no identity with id {identity_id}")
    s = SightingRow.__table__
    tracklet_ids = [
        int(t)
        for t in session.execute(
            sa.select(s.c.tracklet_id).where(s.c.identity_id == identity_id).order_by(s.c.tracklet_id)
        ).scalars()
    ]
    deleted: dict[str, int] = {}
    _delete_tracklets(session, tracklet_ids, deleted)
    _delete_identities(session, [identity_id], "forgotten", when, deleted)
    log.info("forgot identity %d: %s", identity_id, deleted)
    return ForgetReport(identity_id, tuple(tracklet_ids), deleted)


def prune_before(session: Session, cutoff: Instant, *, now: Instant | None = None) -> PruneReport:
    """Retention: delete every tracklet that ended before ``cutoff`` (``end_time < cutoff``, assigned or
    not) with every row that refers to it (embeddings, sightings, pictures, boxes), then every identity left
    without a sighting, whose id is retired (reason ``'pruned'``, at ``now``, default the current time) so
    it is never reused. Identities that keep some sightings get their statistics refreshed. Cameras, their
    health history and ``match_progress`` hold no person data and are kept. Never commits.
    """
    limit = _posix(cutoff, "cutoff")
    when = datetime.now(UTC) if now is None else _utc(now, "now")
    t, s, i = TrackletRow.__table__, SightingRow.__table__, IdentityRow.__table__
    tracklet_ids = [
        int(x)
        for x in session.execute(sa.select(t.c.id).where(t.c.end_posix < limit).order_by(t.c.id)).scalars()
    ]
    touched: set[int] = set()
    for part in _chunks(tracklet_ids):
        touched.update(
            int(x)
            for x in session.execute(
                sa.select(s.c.identity_id).where(s.c.tracklet_id.in_(part)).distinct()
            ).scalars()
        )
    # identities without any sighting at all (none should exist, but they are no one's any more either)
    touched.update(
        int(x)
        for x in session.execute(
            sa.select(i.c.id).where(~sa.exists().where(s.c.identity_id == i.c.id))
        ).scalars()
    )
    deleted: dict[str, int] = {}
    _delete_tracklets(session, tracklet_ids, deleted)
    # Lock, then look: a sighting a concurrent matcher committed meanwhile keeps its identity alive.
    candidates = _lock_identities(session, sorted(touched))
    alive: set[int] = set()
    for part in _chunks(candidates):
        alive.update(
            int(x)
            for x in session.execute(
                sa.select(s.c.identity_id).where(s.c.identity_id.in_(part)).distinct()
            ).scalars()
        )
    gone = sorted(set(candidates) - alive)
    _delete_identities(session, gone, "pruned", when, deleted)
    for identity_id in sorted(alive):
        update_identity_stats(session, identity_id)
    if tracklet_ids or gone:
        log.info(
            "pruned %d tracklet(s) that ended before %s and %d identit(ies): %s",
            len(tracklet_ids),
            _utc(limit, "cutoff").isoformat(),
            len(gone),
            deleted,
        )
    return PruneReport(
        cutoff=_utc(limit, "cutoff"),
        tracklet_ids=tuple(tracklet_ids),
        identity_ids=tuple(gone),
        updated_identity_ids=tuple(sorted(alive)),
        deleted=deleted,
    )
