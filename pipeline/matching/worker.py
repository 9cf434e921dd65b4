"""The matcher worker: embeddings in, identities and sightings in SQL out. Exactly one runs per deployment.

Messages are decoded (malformed -> dead-letter stream, keep going) and handed to the ordered intake
(:mod:`pipeline.matching.ordering`), which releases closing-time buckets once nothing can still join them. Per release,
in ONE transaction: store each tracklet and its embedding (idempotent on the natural key), skip the tracklets
that already have a sighting (a redelivered message changes nothing), assign each bucket jointly with
:class:`pipeline.matching.matcher.Matcher`, store identities, sightings and the intake's progress; commit; only then
acknowledge the messages. If the commit fails the in-memory gallery may be ahead of SQL, so the gallery and
the intake are rebuilt from SQL and the held messages offered again. Only a lost database or queue connection
is retried (:mod:`pipeline.transport.retry`); any other error is a bug and stops the worker.

The worker is the one place that converts between the store's rows and the matching records: the
repository's ``GalleryEntry`` becomes the gallery's :class:`~pipeline.matching.gallery.SavedTracklet`, its
``StreamProgress`` the intake's :class:`~pipeline.matching.ordering.StreamState` and back; the pure logic
never sees ``storage``.

Forgetting and retention (docs/schema.md, "Forgetting a person, and retention"; docs/matcher.md, "Forget,
prune and retention"): each tracklet's per-frame boxes and pictures are stored in the transaction of its
embedding. Every ``retired_poll_s`` seconds the worker reads the identity ids retired (forgotten or pruned by
another process) since it last looked and drops them from its gallery, so nobody is matched to them again.
Should it assign a tracklet to an identity retired meanwhile anyway, the store refuses it
(``IdentityRetiredError``): the transaction is rolled back, nothing acknowledged, and the gallery rebuilt
from SQL (which no longer holds that person) decides again. With ``retention_days`` it prunes when it
starts and every ``prune_every_s`` seconds of footage time: tracklets that ended ``retention_days`` before
the latest end time it has decided, then rebuilds its gallery from what SQL kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import sqlalchemy as sa

from common.redact import redact_text
from pipeline.matching.centering import PRIOR_WEIGHT, CameraCentering
from pipeline.matching.gallery import Gallery, SavedTracklet
from pipeline.matching.matcher import Matcher
from pipeline.matching.ordering import Held, OrderedIntake, Release, StreamState
from pipeline.matching.topology import Topology
from pipeline.transport.messages import Progress, TrackletEmbedding
from pipeline.transport.queues import Message, Queue, decode_or_dead_letter
from pipeline.transport.retry import RETRYABLE_ERRORS, is_retryable
from pipeline.transport.wire import Envelope, decode_matcher_input
from storage import repository as repo
from storage.boxes import TrackBoxes
from storage.db import Store
from storage.models import RetiredIdentityRow

log = logging.getLogger(__name__)

_DAY_S = 86_400.0
# Retired ids are read back this far before the last look: a forget that committed late, or whose clock is a
# little behind ours, is still seen. One later than that is still refused by the store (IdentityRetiredError).
_RETIRED_LOOKBACK_S = 300.0
_TAKEOVER_MAX = 100_000  # messages a starting matcher takes over at once (one reclaim: reclaiming again
# with no idle time would hand the same messages out again and count them towards max_deliveries)


def restore_matcher(
    store: Store,
    *,
    topology: Topology,
    threshold: float,
    model: str,
    max_prototypes: int,
    prior: np.ndarray | None = None,
    prior_weight: float = PRIOR_WEIGHT,
) -> Matcher:
    """A matcher whose gallery holds every identity already in SQL for ``model``; new identities are numbered
    after the largest stored id (of any model). Raises what the store raises (see :func:`run_matcher_worker`
    for which of it is retried).

    ``prior`` given: camera centering (docs/matcher.md, §3a). The store keeps the embeddings as the re-ID
    worker made them; the camera means are rebuilt from all of them and every stored embedding is centred
    with its camera's mean over the whole store before the gallery is rebuilt from it."""
    with store.session(readonly=True) as s:
        rows = [
            SavedTracklet(
                identity_id=g.identity_id,
                camera_id=g.camera_id,
                start=g.start_time,
                end=g.end_time,
                vector=g.vector,
                track_id=g.track_id,
                chunk=g.chunk,
                run=g.session_key,
            )
            for g in repo.load_gallery(s, model)
        ]
        next_id = repo.max_identity_id(s) + 1
    centering = None
    if prior is not None:
        centering = CameraCentering(prior, prior_weight=prior_weight)
        if rows:
            cams = [r.camera_id for r in rows]
            vectors = np.stack([np.asarray(r.vector, dtype=np.float64) for r in rows])
            centering.observe(cams, vectors)
            rows = [replace(r, vector=v) for r, v in zip(rows, centering.center(cams, vectors), strict=True)]
    gallery = Gallery.restore(rows, max_prototypes=max_prototypes, next_id=next_id, model=model)
    return Matcher(gallery, topology, threshold=threshold, model=model, centering=centering)


def run_matcher_worker(
    queue: Queue,
    store: Store,
    make_matcher: Callable[[], Matcher],
    *,
    stream: str,
    group: str,
    consumer: str = "matcher-1",
    batch_size: int = 32,
    block_ms: int = 500,
    stop: threading.Event | None = None,
    drain: threading.Event | None = None,
    retry_s: float = 1.0,
    window_s: float,
    max_wait_s: float,
    expect: tuple[str, list[str]] | None = None,
    retention_days: float | None = None,
    prune_every_s: float | None = None,
    retired_poll_s: float = 5.0,
) -> int:
    """Serve until ``stop``, or until ``drain`` is set and the stream has no lag. Returns tracklets assigned.

    At start it takes over every message still pending in ``group`` (exactly one matcher runs, so those
    belong to a predecessor that died) before reading anything new; embeddings are decided in the order of
    :class:`pipeline.matching.ordering.OrderedIntake` (``window_s``, ``max_wait_s``).
    ``expect=(session, camera_ids)``: the streams of this run, waited for before they say anything. When a
    transaction fails, SQL stays the truth: the gallery and the intake are rebuilt from it and every message
    still held is offered again (nothing is read twice from the queue, so nothing nears ``max_deliveries``).

    Forgotten and pruned people: the ids retired since the last look are read every ``retired_poll_s``
    seconds (wall clock) and dropped from the gallery; an assignment to an id retired meanwhile fails in the
    store with ``IdentityRetiredError``, which rolls the transaction back, acknowledges nothing and rebuilds
    the gallery and the intake from SQL. ``retention_days`` (``retention.days``; None: keep forever) prunes
    the store at start and then every ``prune_every_s`` (``retention.prune_every_s``, required with it)
    seconds of footage time, with the cutoff ``latest decided end time - retention_days``, then rebuilds
    the gallery from SQL when anything was deleted.

    Retried, every ``retry_s``: a rebuild (``make_matcher``, the intake) or a transaction that fails with a
    connection-level error (:func:`pipeline.transport.retry.is_retryable`). Anything else, such as a
    ``TypeError`` in ``make_matcher`` or a ``ValueError`` from the matcher, propagates: the worker stops
    with it, leaving unacknowledged what it had not committed.
    """
    if retention_days is not None and not (
        retention_days > 0 and prune_every_s is not None and prune_every_s > 0
    ):
        raise ValueError(
            f"retention_days {retention_days!r} needs retention_days > 0 and prune_every_s > 0, got "
            f"prune_every_s {prune_every_s!r}"
        )
    queue.ensure_group(stream, group)
    retired_seen = time.time()  # retired ids read up to this wall-clock time (minus the lookback)
    retired_polled = time.monotonic()
    pruned_at: float | None = None  # footage time of the last prune; None: prune as soon as there is one
    held: dict[str, Message] = {}  # every message read and not yet acknowledged, in arrival order
    matcher: Matcher | None = None
    intake: OrderedIntake | None = None
    assigned = 0
    started = False
    while not (stop is not None and stop.is_set()):
        if matcher is None or intake is None:
            try:
                rebuilt_at = time.time()
                matcher = make_matcher()
                intake = _restore_intake(store, window_s=window_s, max_wait_s=max_wait_s)
                retired_seen, retired_polled = rebuilt_at, time.monotonic()  # SQL had them dropped already
            except RETRYABLE_ERRORS as exc:
                if not is_retryable(exc):
                    raise
                log.warning(
                    "cannot rebuild the matcher's state from SQL yet: %s: %s",
                    type(exc).__name__,
                    redact_text(str(exc)),
                )
                matcher = intake = None
                time.sleep(retry_s)
                continue
            if expect is not None:
                intake.expect(*expect)
            decode = _decoder(matcher)
            for m in list(held.values()):
                _offer(queue, intake, m, decode, stream, group, held)
        msgs: list[Message] = []
        if not started:  # take over a dead predecessor's messages before reading anything new
            msgs = queue.reclaim(stream, group, consumer, min_idle_ms=0, count=_TAKEOVER_MAX)
            started = True
        if not msgs:
            msgs = queue.consume(stream, group, consumer, count=batch_size, block_ms=block_ms)
        for m in msgs:
            if m.id not in held:
                held[m.id] = m
                _offer(queue, intake, m, decode, stream, group, held)
        release = intake.release()
        footage = matcher.gallery.latest_end
        prune_due = (
            retention_days is not None
            and footage is not None
            and (pruned_at is None or footage - pruned_at >= prune_every_s)  # type: ignore[operator]
        )
        poll_due = time.monotonic() - retired_polled >= retired_poll_s
        if not release and not prune_due:
            if not msgs and drain is not None and drain.is_set() and queue.lag(stream, group) == 0:
                break
            if not poll_due:
                continue
        try:
            if poll_due:
                polled_at = time.time()
                dropped = _drop_retired(store, matcher, since=retired_seen - _RETIRED_LOOKBACK_S)
                retired_seen, retired_polled = polled_at, time.monotonic()
                if dropped:
                    log.info("dropped retired identities %s from the gallery", dropped)
            if prune_due:
                assert footage is not None and retention_days is not None
                deleted = _prune(store, cutoff=footage - retention_days * _DAY_S)
                pruned_at = footage
                if deleted:  # the gallery still holds what SQL no longer does: decide from SQL again
                    matcher = intake = None
                    continue
            if release:
                assigned += _commit(store, matcher, release, window_s=window_s)
        except repo.IdentityRetiredError as exc:
            # forgotten or pruned by another process after our last look: that transaction rolled back
            log.warning("%s; rebuilding the gallery from SQL and deciding the batch again", exc)
            matcher = intake = None
            continue
        except RETRYABLE_ERRORS as exc:
            if not is_retryable(exc):
                raise
            # the database went away mid-batch: nothing was acknowledged, retry it
            log.warning(
                "matcher transaction failed (%s: %s); rebuilding the gallery from SQL and retrying",
                type(exc).__name__,
                redact_text(str(exc)),
            )
            time.sleep(retry_s)
            store.dispose()
            matcher = intake = None  # their state may be ahead of SQL: never decide with it again
            continue
        if not release:
            continue
        # Only after the commit. Delete the entries too (they carry pictures): matcher.group is the only
        # consumer group of the embedding stream.
        queue.ack(stream, group, release.ack, delete=True)
        for msg_id in release.ack:
            held.pop(msg_id, None)
    if intake is not None and (intake.late or intake.skipped):
        log.warning(
            "out of order: %d tracklet(s) decided after their time had been decided, %d announced but never "
            "received (docs/matcher.md, 'Order'): this run's identities may differ from an undisturbed run's",
            intake.late,
            intake.skipped,
        )
    return assigned


def _drop_retired(store: Store, matcher: Matcher, *, since: float) -> list[int]:
    """Drop from ``matcher``'s gallery the identities retired (forgotten or pruned) at or after ``since``
    (POSIX s, wall clock); returns those it held. One query on ``retired_identities``."""
    retired = RetiredIdentityRow.__table__
    with store.session(readonly=True) as s:
        ids = s.execute(
            sa.select(retired.c.identity_id).where(retired.c.retired_at >= datetime.fromtimestamp(since, UTC))
        ).scalars()
        return matcher.gallery.drop(int(i) for i in ids)


def _prune(store: Store, *, cutoff: float) -> bool:
    """Retention: delete what ended before ``cutoff`` (POSIX s, footage time), in its own transaction.
    Returns whether anything was deleted."""
    with store.session() as s:
        report = repo.prune_before(s, cutoff)
        s.commit()
    if report.tracklet_ids or report.identity_ids:
        log.info(
            "retention: deleted %d tracklet(s) that ended before %s and %d identit(ies) left without any",
            len(report.tracklet_ids),
            report.cutoff.isoformat(),
            len(report.identity_ids),
        )
        return True
    return False


def _restore_intake(store: Store, *, window_s: float, max_wait_s: float) -> OrderedIntake:
    intake = OrderedIntake(window_s=window_s, max_wait_s=max_wait_s)
    with store.session(readonly=True) as s:
        intake.load(
            StreamState(r.session_key, r.camera_id, r.next_seq, r.watermark, r.final)
            for r in repo.load_progress(s)
        )
    return intake


def _decoder(matcher: Matcher | None = None) -> Callable[[bytes], Envelope[TrackletEmbedding | Progress]]:
    model = matcher.gallery.model if matcher is not None else None
    dim = matcher.gallery.dim if matcher is not None else None

    def decode(payload: bytes) -> Envelope[TrackletEmbedding | Progress]:
        # Matcher.assign rejects a whole batch for one such embedding; retried, its neighbours would end in
        # the dead-letter stream with it. Refuse it alone, before anything is stored.
        nonlocal model, dim
        envelope = decode_matcher_input(payload)
        item = envelope.message
        if isinstance(item, Progress):
            return envelope
        model, dim = model or item.model, dim or int(item.embedding.shape[0])
        if item.model != model or item.embedding.shape != (dim,):
            raise ValueError(
                f"embedding of model {item.model!r} with {item.embedding.shape[0]} values; the matcher compares "
                f"{model!r} embeddings of {dim}"
            )
        return envelope

    return decode


def _offer(queue: Queue, intake: OrderedIntake, m: Message, decode, stream: str, group: str, held) -> None:
    decoded = decode_or_dead_letter(queue, stream, group, [m], decode)
    if not decoded:
        held.pop(m.id, None)  # moved to the dead-letter stream (which acknowledges it)
        return
    _, envelope = decoded[0]
    intake.offer(m.id, envelope.message, envelope.session)


def _commit(store: Store, matcher: Matcher, release: Release, *, window_s: float) -> int:
    """One transaction: store the released tracklets and embeddings, decide them (ordered buckets one by one,
    unordered embeddings by closing time in ``window_s`` groups), save the progress."""
    now = datetime.now(UTC)
    assigned = 0
    with store.session() as s:
        touched: set[int] = set()
        groups: list[tuple[list[Held], bool]] = [(b, True) for b in release.buckets]
        if release.unordered:
            groups.append((release.unordered, False))
        for items, ordered in groups:
            fresh: list[tuple[int, TrackletEmbedding]] = []
            for h in items:
                e = h.embedding
                tid = repo.add_tracklet_from(s, e, session_key=h.session)
                repo.add_embedding(
                    s, tid, model=e.model, vector=e.embedding, part_visibility=e.part_visibility
                )
                # in the embedding's transaction: a crash never leaves pictures or boxes without it
                if len(e.track_frames):
                    repo.add_boxes(s, tid, TrackBoxes(e.track_frames, e.track_boxes))
                if e.pictures:
                    repo.add_pictures(
                        s,
                        tid,
                        (
                            repo.Picture(p.kind, p.rank, p.frame_index, p.width, p.height, p.jpeg)
                            for p in e.pictures
                        ),
                    )
                if repo.sighting_of(s, tid) is not None:
                    continue  # redelivered: already decided, change nothing
                fresh.append((tid, e))
            if not fresh:
                continue
            batch = [e for _, e in fresh]
            assignments = (
                matcher.assign(batch) if ordered else matcher.assign_by_closing_time(batch, window_s=window_s)
            )
            for (tid, _), a in zip(fresh, assignments, strict=True):
                repo.ensure_identity(s, a.identity_id, created_at=now)
                repo.add_sighting(s, tid, a.identity_id, a.similarity, now)
                touched.add(a.identity_id)
            assigned += len(fresh)
        for identity_id in sorted(touched):
            repo.update_identity_stats(s, identity_id)
        progress = [
            repo.StreamProgress(p.session, p.camera_id, p.next_seq, p.watermark, p.final)
            for p in release.progress
        ]
        repo.save_progress(s, progress, now=now)
        s.commit()
    return assigned
