"""Global identities and sightings: creating an identity (never a retired id), assigning a tracklet to
one, its statistics, the largest id ever used, and whether an id is retired."""

from __future__ import annotations

import math

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import IdentityRow, RetiredIdentityRow, SightingRow, TrackletRow
from storage.repository._common import Instant, _exists, _insert, _utc, log


class IdentityRetiredError(LookupError):
    """The identity id was forgotten or pruned (``retired_identities``): it is never used again.

    A matcher that still holds the identity in its gallery raises this from :func:`ensure_identity`; it
    should roll back, drop the identity (rebuild its gallery from SQL) and decide again."""

    def __init__(self, identity_id: int, reason: str) -> None:
        super().__init__(f"identity {identity_id} was {reason} and is never used again")
        self.identity_id = identity_id
        self.reason = reason


def _raise_if_retired(session: Session, identity_id: int) -> None:
    retired = RetiredIdentityRow.__table__
    reason = session.execute(sa.select(retired.c.reason).where(retired.c.identity_id == identity_id)).scalar()
    if reason is not None:
        raise IdentityRetiredError(identity_id, reason)


def ensure_identity(session: Session, identity_id: int, *, created_at: Instant) -> bool:
    """Create identity ``identity_id`` (chosen by the matcher, >= 0) if it does not exist. Returns True if it
    was created; an existing identity is left unchanged. Raises :class:`IdentityRetiredError` when the id
    was forgotten or pruned (see :func:`forget_identity`), also when that happens concurrently.

    On PostgreSQL an existing identity is held (``FOR KEY SHARE``) until the caller's transaction ends, so a
    concurrent :func:`forget_identity` or :func:`prune_before` either waits for it (and then deletes what
    it added too) or has committed first, in which case this raises."""
    if isinstance(identity_id, bool) or int(identity_id) != identity_id or identity_id < 0:
        raise ValueError(f"identity_id: expected an integer >= 0, got {identity_id!r}")
    identity_id = int(identity_id)
    _raise_if_retired(session, identity_id)
    table = IdentityRow.__table__
    stmt = (
        _insert(session, table)
        .values(id=identity_id, created_at=_utc(created_at, "created_at"))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    if session.execute(stmt).first() is not None:
        # A forget that deleted the row while we waited to insert has committed its tombstone by now.
        _raise_if_retired(session, identity_id)
        return True
    held = session.execute(
        sa.select(table.c.id).where(table.c.id == identity_id).with_for_update(key_share=True)
    ).first()
    if held is None:  # deleted by a transaction that committed meanwhile
        _raise_if_retired(session, identity_id)
        raise LookupError(f"ensure_identity: identity {identity_id} was deleted meanwhile")
    return False


def add_sighting(
    session: Session, tracklet_id: int, identity_id: int, similarity: float | None, decided_at: Instant
) -> int:
    """Record that tracklet ``tracklet_id`` is identity ``identity_id`` (``similarity`` to it; None when the
    tracklet founded a new identity), decided at ``decided_at``, and refresh that identity's statistics.

    One identity per tracklet, idempotent: if the tracklet already has a sighting, nothing changes and the
    identity stored for it is returned (a different ``identity_id`` is logged as a warning); otherwise
    returns ``identity_id``. Raises ``LookupError`` if the tracklet or the identity does not exist (create
    identities with :func:`ensure_identity`).
    """
    if similarity is not None and not math.isfinite(similarity):
        raise ValueError(f"similarity: expected a finite float or None, got {similarity}")
    sightings = SightingRow.__table__
    existing = sighting_of(session, tracklet_id)
    if existing is None:
        if not _exists(session, TrackletRow.__table__.c.id, tracklet_id):
            raise LookupError(f"add_sighting: no tracklet with id {tracklet_id}")
        if not _exists(session, IdentityRow.__table__.c.id, identity_id):
            raise LookupError(f"add_sighting: no identity with id {identity_id} (call ensure_identity first)")
        stmt = (
            _insert(session, sightings)
            .values(
                tracklet_id=int(tracklet_id),
                identity_id=int(identity_id),
                similarity=None if similarity is None else float(similarity),
                decided_at=_utc(decided_at, "decided_at"),
            )
            .on_conflict_do_nothing(index_elements=["tracklet_id"])
            .returning(sightings.c.identity_id)
        )
        if session.execute(stmt).first() is not None:
            update_identity_stats(session, identity_id)
            return int(identity_id)
        # Another transaction inserted it between our check and our insert.
        existing = sighting_of(session, tracklet_id)
    if existing != identity_id:
        log.warning(
            "tracklet %d is already identity %d; ignoring the new assignment to %d",
            tracklet_id,
            existing,
            identity_id,
        )
    return int(existing)


def sighting_of(session: Session, tracklet_id: int) -> int | None:
    """The identity tracklet ``tracklet_id`` was assigned to, or None if it has no sighting yet."""
    sightings = SightingRow.__table__
    found = session.execute(
        sa.select(sightings.c.identity_id).where(sightings.c.tracklet_id == tracklet_id)
    ).scalar()
    return None if found is None else int(found)


def update_identity_stats(session: Session, identity_id: int) -> None:
    """Recompute ``first_seen``, ``last_seen``, ``num_tracklets`` and ``num_cameras`` of ``identity_id`` from
    its sightings (NULL times and zero counts when it has none). :func:`add_sighting` calls this; call it
    yourself after changing sightings by other means. Raises ``LookupError`` for an unknown identity."""
    s, t = SightingRow.__table__, TrackletRow.__table__
    stats = session.execute(
        sa.select(
            sa.func.min(t.c.start_time).label("first_seen"),
            sa.func.max(t.c.end_time).label("last_seen"),
            sa.func.count().label("num_tracklets"),
            sa.func.count(sa.distinct(t.c.camera_id)).label("num_cameras"),
        )
        .select_from(s.join(t, t.c.id == s.c.tracklet_id))
        .where(s.c.identity_id == identity_id)
    ).one()
    identities = IdentityRow.__table__
    result = session.execute(
        sa.update(identities).where(identities.c.id == identity_id).values(**stats._asdict())
    )
    if result.rowcount == 0:
        raise LookupError(f"update_identity_stats: no identity with id {identity_id}")


def max_identity_id(session: Session) -> int:
    """The largest identity id ever used: stored in ``identities`` or retired (forgotten or pruned, in
    ``retired_identities``); 0 when there is none. So ``max_identity_id(s) + 1`` is free and was never
    anybody's: a restarted matcher numbers its new identities from there."""
    stored = sa.select(sa.func.max(IdentityRow.__table__.c.id)).scalar_subquery()
    retired = sa.select(sa.func.max(RetiredIdentityRow.__table__.c.identity_id)).scalar_subquery()
    row = session.execute(sa.select(sa.func.coalesce(stored, 0), sa.func.coalesce(retired, 0))).one()
    return int(max(row))


def is_retired(session: Session, identity_id: int) -> bool:
    """Whether ``identity_id`` was forgotten or pruned (it is never used again)."""
    return _exists(session, RetiredIdentityRow.__table__.c.identity_id, int(identity_id))
