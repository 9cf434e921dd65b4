"""The matcher worker: embeddings in, identities and sightings in SQL out. Exactly one runs per deployment.

Per batch: decode (malformed -> dead-letter stream, keep going); in ONE transaction store each tracklet and
its embedding (idempotent on the natural key), skip the tracklets that already have a sighting (a
redelivered message changes nothing), assign the rest jointly with :class:`pipeline.matcher.Matcher`, store
identities and sightings; commit; only then acknowledge the messages. If the commit fails the in-memory
gallery may be ahead of SQL, so it is rebuilt from SQL and the messages are retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from pipeline.matcher import Gallery, Matcher, Topology
from pipeline.messages import TrackletEmbedding
from pipeline.queues import Message, Queue, decode_or_dead_letter
from pipeline.wire import decode_embedding
from storage import repository as repo
from storage.db import Store

log = logging.getLogger(__name__)


def restore_matcher(
    store: Store, *, topology: Topology, threshold: float, model: str, max_prototypes: int = 10
) -> Matcher:
    """A matcher whose gallery holds every identity already in SQL for ``model``."""
    with store.session(readonly=True) as s:
        rows = [
            (g.identity_id, g.camera_id, g.start_time, g.end_time, g.vector)
            for g in repo.load_gallery(s, model)
        ]
        next_id = repo.max_identity_id(s) + 1
    gallery = Gallery.restore(rows, max_prototypes=max_prototypes, next_id=next_id, model=model)
    return Matcher(gallery, topology, threshold=threshold, model=model)


def run_matcher_worker(
    queue: Queue,
    store: Store,
    make_matcher: Callable[[], Matcher],
    *,
    stream: str,
    group: str = "matcher",
    consumer: str = "matcher-1",
    batch_size: int = 32,
    block_ms: int = 500,
    reclaim_idle_ms: int = 30_000,
    stop: threading.Event | None = None,
    drain: threading.Event | None = None,
    retry_s: float = 1.0,
) -> int:
    """Serve until ``stop``, or until ``drain`` is set and the stream has no lag. Returns tracklets assigned."""
    queue.ensure_group(stream, group)
    matcher = make_matcher()
    assigned = 0
    last_reclaim = 0.0
    retry_own = False
    while not (stop is not None and stop.is_set()):
        msgs: list[Message] = []
        now = time.monotonic()
        if retry_own or now - last_reclaim > reclaim_idle_ms / 1000 / 2:
            idle = 0 if retry_own else reclaim_idle_ms
            msgs.extend(queue.reclaim(stream, group, consumer, min_idle_ms=idle, count=batch_size))
            last_reclaim, retry_own = now, False
        if len(msgs) < batch_size:
            msgs.extend(
                queue.consume(stream, group, consumer, count=batch_size - len(msgs), block_ms=block_ms)
            )
        if not msgs:
            if drain is not None and drain.is_set() and queue.lag(stream, group) == 0:
                break
            continue
        try:
            if matcher is None:
                matcher = make_matcher()
            assigned += handle_batch(queue, store, matcher, msgs, stream=stream, group=group)
        except Exception as exc:  # the database went away mid-batch: nothing was acknowledged, retry it
            log.warning(
                "matcher batch failed (%s: %s); rebuilding the gallery and retrying", type(exc).__name__, exc
            )
            time.sleep(retry_s)
            store.dispose()
            try:
                matcher = make_matcher()
            except Exception as again:
                log.warning("cannot rebuild the gallery yet: %s", again)
                matcher = None  # its gallery may be ahead of SQL: never match against it again
            retry_own = True
    return assigned


def handle_batch(
    queue: Queue, store: Store, matcher: Matcher, msgs: list[Message], *, stream: str, group: str
) -> int:
    model, dim = matcher.gallery.model, matcher.gallery.dim

    def decode(payload: bytes) -> tuple[TrackletEmbedding, str]:
        # Matcher.assign rejects a whole batch for one such embedding; retried, its neighbours would end in
        # the dead-letter stream with it. Refuse it alone, before anything is stored.
        nonlocal model, dim
        e, key = decode_embedding(payload)
        model, dim = model or e.model, dim or int(e.embedding.shape[0])
        if e.model != model or e.embedding.shape != (dim,):
            raise ValueError(
                f"embedding of model {e.model!r} with {e.embedding.shape[0]} values; the matcher compares "
                f"{model!r} embeddings of {dim}"
            )
        return e, key

    decoded = [(m, e, key) for m, (e, key) in decode_or_dead_letter(queue, stream, group, msgs, decode)]
    if not decoded:
        return 0
    now = datetime.now(UTC)
    with store.session() as s:
        fresh: list[tuple[int, TrackletEmbedding]] = []
        seen: set[int] = set()
        for _, e, session_key in decoded:
            tid = repo.add_tracklet_from(s, e, session_key=session_key)
            repo.add_embedding(s, tid, model=e.model, vector=e.embedding, part_visibility=e.part_visibility)
            if tid in seen or repo.sighting_of(s, tid) is not None:
                continue  # redelivered: already decided, change nothing
            seen.add(tid)
            fresh.append((tid, e))
        assignments = matcher.assign_by_closing_time([e for _, e in fresh]) if fresh else []
        touched = set()
        for (tid, _), a in zip(fresh, assignments, strict=True):
            repo.ensure_identity(s, a.identity_id, created_at=now)
            repo.add_sighting(s, tid, a.identity_id, a.similarity, now)
            touched.add(a.identity_id)
        for identity_id in sorted(touched):
            repo.update_identity_stats(s, identity_id)
        s.commit()
    queue.ack(stream, group, [m.id for m, _, _ in decoded])  # only after the commit
    return len(fresh)
