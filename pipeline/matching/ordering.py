"""The matcher's ordered intake: embeddings are decided in an order fixed by the footage, not by timing.

Why: the matcher's result depends on the order it sees tracklets in (a later tracklet can join an identity an
earlier one created). Queue batches, several re-ID workers, a worker killed and its messages redelivered
later: all of them change the arrival order. So the matcher does not decide in arrival order. Each camera
worker run (a *stream*, keyed by ``(session, camera_id)``) numbers its tracklets (``Order.seq``) and says how
far it has got (``Order.watermark``, and :class:`pipeline.transport.messages.Progress` markers about once a second):
every tracklet it publishes later ends at or after the watermark. The intake

1. puts each stream's embeddings back in ``seq`` order (a gap waits for the missing one);
2. applies a stream's watermark once everything numbered before it has arrived;
3. releases closing-time buckets ``[k * window_s, (k + 1) * window_s)`` once the least watermark over all
   streams has passed the bucket's end: nothing that belongs to the bucket can still come;
4. hands the released buckets over in time order, each sorted by ``(end_time, key)``.

So the decisions depend only on what the cameras saw. The state that matters across a restart (per stream:
the next ``seq`` expected, the watermark, whether it ended) is saved in SQL with the identities it led to
(``match_progress``); everything held but not released is still unacknowledged in the queue and comes back.

Liveness over order, when something is missing for good: a gap that has not filled for ``max_wait_s`` is
skipped (logged), a stream not heard from for ``max_wait_s`` stops holding the others back, and a live
camera whose source is down says so (``idle``) and is not waited for. What arrives after its bucket was
released is *late*: it is decided at once, counted in :attr:`OrderedIntake.late`. Embeddings without an
order (an older producer) are decided as they come, as before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pipeline.transport.messages import Progress, TrackletEmbedding

log = logging.getLogger(__name__)

__all__ = ["Held", "OrderedIntake", "Release", "StreamState"]

StreamKey = tuple[str, str]  # (session, camera_id)


@dataclass(frozen=True)
class StreamState:
    """How far the intake has read one camera worker run in order: what it saves and resumes from.

    ``session`` and ``camera_id`` name the stream; ``next_seq`` is the next sequence number expected;
    ``watermark`` the greatest applied watermark (POSIX seconds; ``None`` before any); ``final`` whether the
    run said it ended. The caller stores these (the matcher worker: ``match_progress`` rows) and hands them
    back to :meth:`OrderedIntake.load` after a restart.
    """

    session: str
    camera_id: str
    next_seq: int
    watermark: float | None
    final: bool


@dataclass(frozen=True)
class Held:
    """One embedding message the intake holds until its bucket is released."""

    msg_id: str
    embedding: TrackletEmbedding
    session: str


@dataclass
class Release:
    """What to decide now and what to save with it.

    ``buckets``: ordered embeddings, bucket by bucket in time order, each sorted by ``(end_time, key)``, to be
    assigned one bucket at a time; ``unordered``: embeddings without an order, decided together as before;
    ``progress``: the streams' changed :class:`StreamState`, to save in the same transaction; ``ack``: message ids to acknowledge
    once it committed (the released embeddings, applied markers and duplicates).
    """

    buckets: list[list[Held]] = field(default_factory=list)
    unordered: list[Held] = field(default_factory=list)
    progress: list[StreamState] = field(default_factory=list)
    ack: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.buckets or self.unordered or self.progress or self.ack)


@dataclass
class _Stream:
    session: str
    camera_id: str
    heard_at: float  # monotonic time anything of this stream last arrived
    moved_at: float  # monotonic time its frontier last moved
    next_seq: int = 0
    watermark: float = -math.inf  # greatest applied watermark
    final: bool = False
    idle: bool = False
    started_at: float = 0.0  # wall-clock start of the camera worker run whose markers apply
    last_pos: tuple[int, int, int] = (-1, 0, -1)  # publication position of the latest applied message
    waiting: dict[int, Held] = field(default_factory=dict)  # seq -> embedding ahead of a gap
    markers: list[tuple[Progress, str]] = field(default_factory=list)  # not yet applied (ahead of a gap)
    dirty: bool = False  # changed since the last saved progress row

    def bound(self, now: float, max_wait_s: float) -> float:
        """This stream's lower bound on the end time of what it has still to deliver."""
        if self.final or self.idle:
            return math.inf
        if not self.waiting and now - self.heard_at > max_wait_s:
            return math.inf  # gone quiet: its camera worker is not running; do not hold the others back
        return self.watermark


class OrderedIntake:
    """Reorders one matcher's input; see the module docstring. Not thread-safe (one matcher loop owns it).

    ``window_s`` and ``max_wait_s`` as in the module docstring (no defaults here: the config schema's
    ``matcher`` section holds them). ``clock`` is monotonic seconds (injectable for tests). Restore a
    restarted matcher's state with :meth:`load` (the :class:`StreamState` saved with earlier releases)
    before offering anything.
    """

    def __init__(
        self,
        *,
        window_s: float,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not window_s > 0 or not max_wait_s > 0:
            raise ValueError(f"window_s and max_wait_s must be > 0, got {window_s}, {max_wait_s}")
        self.window_s = float(window_s)
        self.max_wait_s = float(max_wait_s)
        self.clock = clock
        self.late = 0  # embeddings whose bucket had already been released when they became ready
        self.skipped = 0  # sequence numbers given up on
        self._streams: dict[StreamKey, _Stream] = {}
        self._ready: list[Held] = []
        self._unordered: list[Held] = []
        self._held_keys: dict[tuple[str, str, int, int], str] = {}  # natural key -> msg id
        self._ack: list[str] = []
        self._released_to = -math.inf  # every bucket ending at or before this has been released

    # -- state ---------------------------------------------------------------------------------------

    def load(self, rows: Iterable[StreamState], *, grace_s: float = 5.0) -> None:
        """Resume from saved progress. A stream that was not final and says nothing within ``grace_s`` is
        taken to be gone (its camera worker ended without a final marker)."""
        now = self.clock()
        quiet_since = now - self.max_wait_s + grace_s
        for r in rows:
            s = _Stream(r.session, r.camera_id, heard_at=quiet_since, moved_at=now)
            s.next_seq, s.final = int(r.next_seq), bool(r.final)
            s.watermark = -math.inf if r.watermark is None else float(r.watermark)
            s.last_pos = (s.next_seq - 1, 0, -1)
            self._streams[(r.session, r.camera_id)] = s

    def expect(self, session: str, camera_ids: Iterable[str]) -> None:
        """Wait for these streams (the cameras of this run) even before they say anything."""
        now = self.clock()
        for cid in camera_ids:
            self._stream(session, cid, now)

    @property
    def holding(self) -> int:
        """Embeddings held, not yet released."""
        return len(self._ready) + sum(len(s.waiting) for s in self._streams.values())

    def watermark(self) -> float:
        """The least bound over all streams (+inf with none): everything ending before it has arrived."""
        now = self.clock()
        return min((s.bound(now, self.max_wait_s) for s in self._streams.values()), default=math.inf)

    # -- input ---------------------------------------------------------------------------------------

    def offer(self, msg_id: str, item: TrackletEmbedding | Progress, session: str) -> None:
        """Take one decoded message (an embedding or a progress marker) of camera worker run ``session``."""
        now = self.clock()
        if isinstance(item, Progress):
            s = self._stream(session, item.camera_id, now)
            s.heard_at = now
            if item.started_at < s.started_at:  # from a camera worker run that has since been replaced
                self._ack.append(msg_id)
                return
            if item.started_at > s.started_at:
                if s.started_at > 0 or s.final:
                    # a camera worker that starts this run again (a replay resumed under the same key, a
                    # restarted worker): it republishes from seq 0 (decided before: skipped) and goes on from
                    # where the last one stopped; wait for it again
                    s.final, s.idle, s.last_pos = False, False, (-1, 0, -1)
                    self._ack.extend(old_id for _, old_id in s.markers)
                    s.markers = []
                    s.dirty = True
                s.started_at = item.started_at
            s.markers.append((item, msg_id))
            self._advance(s, now)
            return
        key = (session, *item.key)
        if key in self._held_keys:  # the same tracklet twice (a redelivery): keep one, acknowledge the other
            if self._held_keys[key] != msg_id:
                self._ack.append(msg_id)
            return
        self._held_keys[key] = msg_id
        held = Held(msg_id, item, session)
        if item.order is None:
            self._unordered.append(held)
            return
        s = self._stream(session, item.camera_id, now)
        s.heard_at = now
        seq = int(item.order.seq)
        if seq < s.next_seq:  # read before a restart, not yet decided then: ready as it is
            self._make_ready(held)
        else:
            s.waiting[seq] = held
            self._advance(s, now)

    # -- output --------------------------------------------------------------------------------------

    def release(self) -> Release:
        """Everything that can be decided now (see :class:`Release`); the intake forgets what it hands out."""
        now = self.clock()
        for s in self._streams.values():
            if s.waiting and now - s.moved_at > self.max_wait_s:
                missing = s.next_seq
                first = min(s.waiting)
                log.warning(
                    "camera %s (run %s): tracklets %d..%d never reached the matcher in %.0f s; going on "
                    "without them",
                    s.camera_id,
                    s.session,
                    missing,
                    first - 1,
                    self.max_wait_s,
                )
                self.skipped += first - missing
                s.next_seq = first
                self._advance(s, now)
        bound = self.watermark()
        out = Release(unordered=self._unordered, ack=self._ack)
        self._unordered, self._ack = [], []
        ripe = [h for h in self._ready if self._bucket_end(h) <= bound]
        if ripe:
            self._ready = [h for h in self._ready if self._bucket_end(h) > bound]
            ripe.sort(key=lambda h: (h.embedding.end_time, h.embedding.key, h.session))
            for h in ripe:
                if not out.buckets or self._bucket(out.buckets[-1][0]) != self._bucket(h):
                    out.buckets.append([])
                out.buckets[-1].append(h)
        if bound > self._released_to:
            self._released_to = (
                math.floor(bound / self.window_s) * self.window_s if math.isfinite(bound) else bound
            )
        for h in [*out.unordered, *ripe]:
            out.ack.append(h.msg_id)
            self._held_keys.pop((h.session, *h.embedding.key), None)
        for s in self._streams.values():
            if s.dirty:
                wm = s.watermark if math.isfinite(s.watermark) else None
                out.progress.append(StreamState(s.session, s.camera_id, s.next_seq, wm, s.final))
                s.dirty = False
        return out

    # -- internals -----------------------------------------------------------------------------------

    def _stream(self, session: str, camera_id: str, now: float) -> _Stream:
        s = self._streams.get((session, camera_id))
        if s is None:
            s = self._streams[(session, camera_id)] = _Stream(session, camera_id, now, now, dirty=True)
        return s

    def _bucket(self, h: Held) -> int:
        return math.floor(h.embedding.end_time / self.window_s)

    def _bucket_end(self, h: Held) -> float:
        return (self._bucket(h) + 1) * self.window_s

    def _make_ready(self, h: Held) -> None:
        if self._bucket_end(h) <= self._released_to:
            self.late += 1
            log.info(
                "tracklet %s of run %s arrived after its time was decided (late)", h.embedding.key, h.session
            )
        self._ready.append(h)

    def _advance(self, s: _Stream, now: float) -> None:
        """Move the stream's frontier over what has arrived; apply the markers it has reached."""
        while s.next_seq in s.waiting:
            h = s.waiting.pop(s.next_seq)
            self._make_ready(h)
            pos = (s.next_seq, 0, -1)
            if pos > s.last_pos:
                s.last_pos, s.idle = pos, False
            assert h.embedding.order is not None
            s.watermark = max(s.watermark, h.embedding.order.watermark)
            s.next_seq += 1
            s.moved_at, s.dirty = now, True
        if not s.waiting:
            s.moved_at = now  # nothing is missing: a quiet stream is not a stuck one
        pending: list[tuple[Progress, str]] = []
        for marker, msg_id in sorted(s.markers, key=lambda pm: pm[0].n):
            if marker.last_seq >= s.next_seq:
                pending.append((marker, msg_id))
                continue
            pos = (marker.last_seq, 1, marker.n)
            if pos > s.last_pos:
                s.last_pos, s.idle = pos, marker.idle
                if not marker.idle:
                    s.watermark = max(s.watermark, marker.watermark)
                s.final = s.final or marker.final
                s.dirty = True
            self._ack.append(msg_id)
        s.markers = pending
