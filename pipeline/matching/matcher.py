"""Cross-camera matcher: link tracklet embeddings from several cameras into global identities.

Pure logic (no I/O, SQL or Redis). Three parts:

- :class:`Topology` answers "may one person produce both of these sightings?" from camera links (with transit
  windows), overlapping camera pairs and the rule that nobody is in two non-overlapping places at once.
- :class:`Gallery` holds the global identities: a bounded, diverse set of prototype embeddings per identity,
  kept in contiguous float32 matrices so that the similarity of a batch to every identity is a few matrix
  products plus a scatter-max; a bounded sighting history per identity for the gates; and the map
  ``(camera_id, track_id) -> identity`` that keeps the chunks of one track together.
- :class:`Matcher` assigns a batch of :class:`~pipeline.transport.messages.TrackletEmbedding` jointly (Hungarian
  algorithm) and creates identities for the tracklets nothing fits.

The decision rule, precisely and with a worked example, is in ``docs/matcher.md``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.transport.messages import TrackletEmbedding

__all__ = ["Assignment", "Gallery", "Matcher", "Span", "Topology"]

# Similarity margins above the threshold are compared on a grid of 2**-_MARGIN_BITS (about 1e-6) so that
# the joint assignment can break exact ties by identity id with integer-valued costs (docs/matcher.md).
_MARGIN_BITS = 20


@dataclass(frozen=True)
class Span:
    """One sighting: ``camera_id`` saw the person from ``start`` to ``end`` (POSIX seconds, start <= end)."""

    camera_id: str
    start: float
    end: float


@dataclass(frozen=True)
class Assignment:
    """The matcher's decision for one tracklet.

    ``key`` is the tracklet's ``(camera_id, track_id, chunk)``. ``similarity`` is the cosine similarity of the
    tracklet to ``identity_id`` as the identity stood before this batch (max over its prototypes), or ``None``
    when the identity was created by this batch (``is_new``; every tracklet of the group that created it).
    A continued track's chunk carries its similarity even when it is below the threshold.
    """

    key: tuple[str, int, int]
    identity_id: int
    similarity: float | None
    is_new: bool


# ----------------------------------------------------------------------------------------------------
# Topology


def _overlap(start_a: float, end_a: float, start_b: float, end_b: float) -> bool:
    """Closed intervals that share more than an end point (touching intervals do not overlap)."""
    return start_a < end_b and start_b < end_a


class Topology:
    """Where a person can go and how long it takes.

    ``links`` maps a pair of distinct cameras (a ``frozenset`` or a 2-tuple; links are undirected) to
    ``(min_transit_s, max_transit_s)``, the time from leaving one camera to appearing in the other,
    ``0 <= min <= max`` (``max`` may be ``inf``). ``overlaps`` lists pairs of cameras that see the same place,
    so one person may be in both at the same time. ``default`` decides for pairs that are neither linked nor
    overlapping: ``"open"`` allows any transit, ``"closed"`` allows none; ``None`` (the default) means
    ``"open"`` when no links and no overlaps are given (no topology configured) and ``"closed"`` otherwise.

    Raises ValueError for a pair that is not two distinct camera ids, a pair given twice (in either order),
    or a bad transit window. Build it from the config in the composition root::

        Topology({l.cameras: (l.min_transit_s, l.max_transit_s) for l in cfg.links}, cfg.overlaps)
    """

    def __init__(
        self,
        links: Mapping[frozenset[str] | tuple[str, str], tuple[float, float]] | None = None,
        overlaps: Iterable[tuple[str, str]] = (),
        *,
        default: Literal["open", "closed"] | None = None,
    ) -> None:
        self._links: dict[tuple[str, str], tuple[float, float]] = {}
        for pair, window in (links or {}).items():
            a, b = self._pair(pair, "links")
            if (a, b) in self._links:
                raise ValueError(f"links: the pair {a!r}-{b!r} is given twice (links are undirected)")
            try:
                lo, hi = (float(x) for x in window)
            except (TypeError, ValueError):
                raise ValueError(
                    f"links[{a!r}-{b!r}]: expected (min_transit_s, max_transit_s), got {window!r}"
                ) from None
            if not (0.0 <= lo <= hi) or math.isnan(hi):
                raise ValueError(f"links[{a!r}-{b!r}]: expected 0 <= min <= max, got ({lo}, {hi})")
            self._links[(a, b)] = self._links[(b, a)] = (lo, hi)
        self._overlaps: set[tuple[str, str]] = set()
        for pair in overlaps:
            a, b = self._pair(pair, "overlaps")
            self._overlaps |= {(a, b), (b, a)}
        if default is None:
            default = "closed" if self._links or self._overlaps else "open"
        if default not in ("open", "closed"):
            raise ValueError(f"default: expected 'open', 'closed' or None, got {default!r}")
        self.default: Literal["open", "closed"] = default

    @staticmethod
    def _pair(pair: object, what: str) -> tuple[str, str]:
        items = sorted(pair) if isinstance(pair, frozenset) else list(pair)  # type: ignore[call-overload]
        if len(items) != 2 or not all(isinstance(c, str) for c in items) or items[0] == items[1]:
            raise ValueError(f"{what}: expected two distinct camera ids, got {pair!r}")
        return items[0], items[1]

    def link(self, cam_a: str, cam_b: str) -> tuple[float, float] | None:
        """The ``(min, max)`` transit window between two cameras (either order), or ``None``."""
        return self._links.get((cam_a, cam_b))

    def overlapping(self, cam_a: str, cam_b: str) -> bool:
        """True for a pair listed in ``overlaps`` (either order); a camera does not overlap itself."""
        return (cam_a, cam_b) in self._overlaps

    def can_follow(self, cam_a: str, end_a: float, cam_b: str, start_b: float) -> bool:
        """May a person seen in ``cam_a`` until ``end_a`` be seen in ``cam_b`` from ``start_b``, next?

        Directional: it tests the walk A then B, with transit ``start_b - end_a`` (negative when B started
        before A ended). Overlapping cameras: always. Same camera: transit >= 0 (re-entering the view).
        Linked cameras: ``min <= transit <= max``. Otherwise: transit >= 0 if ``default`` is ``"open"``,
        never if ``"closed"``. Whether two sightings may belong to one person in either order is
        :meth:`compatible`; against a whole history, :meth:`allows`.
        """
        if (cam_a, cam_b) in self._overlaps:
            return True
        transit = start_b - end_a
        if cam_a == cam_b:
            return transit >= 0.0
        window = self._links.get((cam_a, cam_b))
        if window is not None:
            return window[0] <= transit <= window[1]
        return self.default == "open" and transit >= 0.0

    def compatible(self, a: Span, b: Span) -> bool:
        """May one person produce both sightings (in whichever order they happened)?

        If the intervals overlap, only when the cameras overlap (same camera counts as not overlapping: two
        tracks at once in one view are two people). Otherwise :meth:`can_follow` from the earlier to the later.
        """
        if _overlap(a.start, a.end, b.start, b.end):
            return self.overlapping(a.camera_id, b.camera_id)
        if a.end <= b.start:
            return self.can_follow(a.camera_id, a.end, b.camera_id, b.start)
        return self.can_follow(b.camera_id, b.end, a.camera_id, a.start)

    def allows(self, history: Iterable[Span], camera_id: str, start: float, end: float) -> bool:
        """May an identity with sightings ``history`` also be seen in ``camera_id`` from ``start`` to ``end``?

        1. Every sighting that overlaps the new interval in time must be in an overlapping camera.
        2. Transit is checked against the immediate neighbours in time only (a path A -> B -> C must not be
           judged by the A -> C pair): among the sightings that ended by ``start``, those with no other such
           sighting starting at or after their end; at least one of them must :meth:`can_follow` into the new
           one. Symmetrically for the sightings that start at or after ``end`` (late, out-of-order arrivals).
           A side with no sighting passes; so does a side covered by an overlapping co-sighting (one that
           began by ``start``, respectively lasted until ``end``), whose own gates already held.
        """
        before: list[Span] = []
        after: list[Span] = []
        bridged_before = bridged_after = False
        for h in history:
            if _overlap(h.start, h.end, start, end):
                if not self.overlapping(h.camera_id, camera_id):
                    return False
                bridged_before |= h.start <= start
                bridged_after |= h.end >= end
            elif h.end <= start:
                before.append(h)
            else:
                after.append(h)
        if before and not bridged_before:
            # p is an immediate predecessor iff every other earlier sighting started before p ended
            starts = [h.start for h in before]
            first = max(range(len(starts)), key=starts.__getitem__)
            second = max((s for i, s in enumerate(starts) if i != first), default=-math.inf)
            if not any(
                p.end > (second if i == first else starts[first])
                and self.can_follow(p.camera_id, p.end, camera_id, start)
                for i, p in enumerate(before)
            ):
                return False
        if after and not bridged_after:
            # n is an immediate successor iff every other later sighting ends after n starts
            ends = [h.end for h in after]
            first = min(range(len(ends)), key=ends.__getitem__)
            second = min((e for i, e in enumerate(ends) if i != first), default=math.inf)
            if not any(
                n.start < (second if i == first else ends[first])
                and self.can_follow(camera_id, end, n.camera_id, n.start)
                for i, n in enumerate(after)
            ):
                return False
        return True


# ----------------------------------------------------------------------------------------------------
# Gallery


def _records(a: np.ndarray) -> np.ndarray:
    """View a C-contiguous (n, k) array as (n,) opaque records, so that fancy indexing copies whole rows."""
    return a.view(np.dtype((np.void, a.dtype.itemsize * a.shape[1]))).reshape(a.shape[0])


class _Buffer:
    """A growable array: ``append`` writes in place and doubles the capacity when full (amortised O(1))."""

    def __init__(self, dtype: type, tail: tuple[int, ...] = (), capacity: int = 16) -> None:
        self._a = np.empty((capacity, *tail), dtype)
        self.n = 0

    def append(self, value: object) -> int:
        if self.n == self._a.shape[0]:
            grown = np.empty((2 * self.n, *self._a.shape[1:]), self._a.dtype)
            grown[: self.n] = self._a[: self.n]
            self._a = grown
        self._a[self.n] = value
        self.n += 1
        return self.n - 1

    @property
    def data(self) -> np.ndarray:
        """The filled part, a view (valid until the next append)."""
        return self._a[: self.n]


@dataclass
class _TrackEntry:
    """What the gallery remembers of one track run: its identity and the chunks and times seen so far."""

    identity_id: int
    token: int  # sightings with the same token are one track run and are merged into one span
    lo_chunk: int
    hi_chunk: int
    lo_start: float
    hi_end: float


def _unit(vector: object, what: str, dim: int | None) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    if v.ndim != 1 or v.shape[0] == 0 or (dim is not None and v.shape[0] != dim):
        expected = f"({dim},)" if dim is not None else "(E,)"
        raise ValueError(f"{what}: expected a vector of shape {expected}, got {v.shape}")
    norm = float(np.linalg.norm(v))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{what}: expected a finite non-zero vector, got norm {norm}")
    return (v / norm).astype(np.float32)


class Gallery:
    """Global identities: prototype embeddings, sighting history, and the track -> identity map.

    - **Ids** are integers handed out by this instance from ``next_id`` (default 1; a restarting matcher
      passes the largest stored id + 1, or uses :meth:`restore`). They only grow; identities are never removed.
    - **Prototypes**: at most ``max_prototypes`` unit vectors per identity, each with a count of the
      embeddings merged into it. A new embedding is appended while there is room. When full, the closest pair
      among the K prototypes and the new embedding (highest cosine, lowest indices on ties) is merged into one
      count-weighted mean, renormalised; so near-duplicates collapse and outlying views survive.
    - **Sightings**: per identity, the latest ``max_sightings`` spans by end time. Chunks of one track run
      merge into one span, so a person standing in view for an hour costs one entry.
    - **Tracks**: the latest ``max_tracks`` ``(camera_id, track_id)`` runs seen, least recently used first out.

    Prototypes are stored by layer: layer r is a contiguous (n_r, E) float32 matrix of the r-th prototype of
    every identity that has one (layer 0: every identity, in id order), growing by capacity doubling, with an
    owner array. Similarity to all identities is one matrix product per non-empty layer: layer 0's product is
    already per identity, deeper layers are folded in by a scatter-max on their owners. Nothing is sorted,
    nothing reallocated per call; a merge rewrites one row in place.
    """

    def __init__(
        self,
        *,
        max_prototypes: int = 10,
        max_sightings: int = 64,
        max_tracks: int = 100_000,
        next_id: int = 1,
        model: str | None = None,
    ) -> None:
        for name, value in (
            ("max_prototypes", max_prototypes),
            ("max_sightings", max_sightings),
            ("max_tracks", max_tracks),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if not isinstance(next_id, int):
            raise ValueError(f"next_id: expected an integer, got {next_id!r}")
        self.max_prototypes = max_prototypes
        self.max_sightings = max_sightings
        self.max_tracks = max_tracks
        self.model = model
        self._next_id = next_id
        self._dim: int | None = None
        # Layer r holds the r-th prototype of every identity that has one: (n_r, E) float32, created when E
        # is known; its identity slots; and how many embeddings were merged into each row.
        self._layers: list[_Buffer] = []
        self._layer_slots = [_Buffer(np.int64) for _ in range(max_prototypes)]
        self._layer_counts = [_Buffer(np.int64) for _ in range(max_prototypes)]
        self._slot_rows: list[list[int]] = []
        self._ids = _Buffer(np.int64)  # slot -> identity id, increasing
        self._slot_of: dict[int, int] = {}
        self._spans: list[list[Span]] = []
        self._tokens: list[list[int]] = []
        self._tracks: OrderedDict[tuple[str, int], _TrackEntry] = OrderedDict()
        self._next_token = 0

    # -- queries -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._ids.n

    def __contains__(self, identity_id: object) -> bool:
        return identity_id in self._slot_of

    @property
    def next_id(self) -> int:
        """The id the next new identity will get."""
        return self._next_id

    @property
    def dim(self) -> int | None:
        """Embedding length E, fixed by the first embedding added (``None`` while empty)."""
        return self._dim

    @property
    def ids(self) -> np.ndarray:
        """(N,) int64 identity ids in increasing order: the column order of :meth:`similarities`."""
        return self._ids.data.copy()

    def prototypes(self, identity_id: int) -> np.ndarray:
        """(k, E) float32 copy of the identity's prototypes, 1 <= k <= ``max_prototypes``. KeyError if unknown."""
        return self._slot_prototypes(self._slot(identity_id))

    def sightings(self, identity_id: int) -> list[Span]:
        """The identity's remembered sightings, by start time. KeyError if unknown."""
        return sorted(self._spans[self._slot(identity_id)], key=lambda s: (s.start, s.end, s.camera_id))

    def track_identity(self, camera_id: str, track_id: int) -> int | None:
        """The identity the latest run of this track was assigned to, if remembered."""
        entry = self._tracks.get((camera_id, int(track_id)))
        return None if entry is None else entry.identity_id

    def similarities(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of each query to each identity (the max over its prototypes).

        ``embeddings`` (Q, E) unit vectors (float32 or convertible). Returns ``(ids (N,) int64, sims (Q, N)
        float32)`` with columns in increasing id order. Raises ValueError for a wrong shape.
        """
        q = np.asarray(embeddings, dtype=np.float32)
        if q.ndim != 2 or (self._dim is not None and q.shape[1] != self._dim):
            raise ValueError(f"embeddings: expected shape (Q, {self._dim or 'E'}), got {q.shape}")
        if self._ids.n == 0 or q.shape[0] == 0:
            return self.ids, np.zeros((q.shape[0], self._ids.n), np.float32)
        # Layer 0 is in slot order, so its product is already the per-identity answer for one prototype.
        out = self._layers[0].data @ q.T  # (N, E) @ (E, Q) -> (N, Q), C-contiguous
        for layer, slots in zip(self._layers[1:], self._layer_slots[1:], strict=False):
            if layer.n == 0:
                break  # layers fill in order: no identity has an r-th prototype, so none has an (r+1)-th
            rows = slots.data  # the owners, unique within a layer: gather, max, write back = scatter-max
            best = np.take(out, rows, axis=0)  # (n_r, Q)
            np.maximum(best, layer.data @ q.T, out=best)
            _records(out)[rows] = _records(best)  # whole-row writes, several times faster than out[rows] =
        return self.ids, out.T  # (Q, N) view

    # -- updates -------------------------------------------------------------------------------------

    def create(self, embedding: np.ndarray, camera_id: str, start: float, end: float) -> int:
        """Start a new identity from one embedding and its sighting; return its id (``next_id``, then +1)."""
        return self._create(_unit(embedding, "embedding", self._dim), Span(camera_id, start, end), -1)

    def add(self, identity_id: int, embedding: np.ndarray, camera_id: str, start: float, end: float) -> None:
        """Add an embedding (prototype update) and a sighting to an existing identity. KeyError if unknown."""
        slot = self._slot(identity_id)
        self._add(slot, _unit(embedding, "embedding", self._dim), Span(camera_id, start, end), -1)

    @classmethod
    def restore(
        cls,
        rows: Iterable[Sequence[object]],
        *,
        max_prototypes: int = 10,
        max_sightings: int = 64,
        max_tracks: int = 100_000,
        next_id: int = 1,
        model: str | None = None,
    ) -> Gallery:
        """Rebuild a gallery from stored ``(identity_id, camera_id, start, end, vector[, track])`` rows (any order).

        ``track``, when every row has it, is ``(track_id, chunk, run)``: ``run`` names the camera worker run
        (its session key). Rows are replayed by ``(end, camera_id, track_id, chunk)`` -- the order a live
        matcher decides in -- (without ``track``: by ``(end, start, identity_id)``), each identity created
        from its earliest row, the others added as :meth:`add` does; so prototypes and sightings come out as
        the live gallery had them. With ``track`` the chunks of one run merge into one sighting, and the track
        map remembers each ``(camera_id, track_id)``'s latest run, so the next chunk of a track that was open
        at a restart continues its identity as it would have without the restart.
        ``next_id`` becomes ``max(next_id, largest id + 1)``. Raises ValueError naming the row index for a
        malformed row.
        """
        gallery = cls(
            max_prototypes=max_prototypes,
            max_sightings=max_sightings,
            max_tracks=max_tracks,
            next_id=next_id,
            model=model,
        )
        parsed: list[tuple[int, Span, np.ndarray, tuple[int, int, object] | None]] = []
        for i, row in enumerate(rows):
            try:
                identity_id, camera_id, start, end, vector, *rest = row
                if len(rest) > 1:
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(
                    f"rows[{i}]: expected (identity_id, camera_id, start, end, vector[, track]), got {row!r}"
                ) from None
            if isinstance(identity_id, bool) or not isinstance(identity_id, int | np.integer):
                raise ValueError(f"rows[{i}]: identity_id must be an integer, got {identity_id!r}")
            if not isinstance(camera_id, str):
                raise ValueError(f"rows[{i}]: camera_id must be a string, got {camera_id!r}")
            start, end = float(start), float(end)  # type: ignore[arg-type]
            if not (math.isfinite(start) and math.isfinite(end) and start <= end):
                raise ValueError(f"rows[{i}]: expected finite start <= end, got ({start}, {end})")
            track = None
            if rest:
                try:
                    track_id, chunk, run = rest[0]
                    track = (int(track_id), int(chunk), run)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"rows[{i}]: track must be (track_id, chunk, run), got {rest[0]!r}"
                    ) from None
            vec = _unit(vector, f"rows[{i}].vector", parsed[0][2].shape[0] if parsed else None)
            parsed.append((int(identity_id), Span(camera_id, start, end), vec, track))
        with_tracks = bool(parsed) and all(p[3] is not None for p in parsed)

        def order_key(i: int) -> tuple:
            ident, span, _, track = parsed[i]
            if with_tracks:
                assert track is not None
                return (span.end, span.camera_id, track[0], track[1], i)
            return (span.end, span.start, ident, i)

        order = sorted(range(len(parsed)), key=order_key)
        first: dict[int, int] = {}
        for i in order:
            first.setdefault(parsed[i][0], i)
        tokens: dict[tuple[str, int, object], int] = {}
        runs: dict[tuple[str, int, object], list[int]] = {}

        def token_of(i: int) -> int:
            track = parsed[i][3]
            if not with_tracks or track is None:
                return -1
            run = (parsed[i][1].camera_id, track[0], track[2])
            runs.setdefault(run, []).append(i)
            if run not in tokens:
                tokens[run] = gallery._new_token()
            return tokens[run]

        row_token = {i: token_of(i) for i in order}
        for identity_id in sorted(first):  # slots in increasing id order, as live creation makes them
            i = first[identity_id]
            gallery._create(parsed[i][2], parsed[i][1], row_token[i], identity_id=identity_id)
        for i in order:
            if first[parsed[i][0]] != i:
                identity_id, span, vec, _ = parsed[i]
                gallery._add(gallery._slot_of[identity_id], vec, span, row_token[i])
        if first:
            gallery._next_id = max(next_id, max(first) + 1)
        latest: dict[tuple[str, int], tuple[float, tuple[str, int, object]]] = {}
        for run, members in runs.items():  # each track's latest run, remembered oldest first
            end = max(parsed[i][1].end for i in members)
            key = (run[0], run[1])
            if key not in latest or end >= latest[key][0]:
                latest[key] = (end, run)
        for key, (_, run) in sorted(latest.items(), key=lambda kv: kv[1][0]):
            members = runs[run]
            chunks = [parsed[i][3][1] for i in members]  # type: ignore[index]
            last = max(members, key=lambda i: (parsed[i][1].end, parsed[i][3][1]))  # type: ignore[index]
            gallery._remember_track(
                key,
                _TrackEntry(
                    parsed[last][0],
                    tokens[run],
                    min(chunks),
                    max(chunks),
                    min(parsed[i][1].start for i in members),
                    max(parsed[i][1].end for i in members),
                ),
            )
        return gallery

    # -- internals (the Matcher in this module uses them too) ----------------------------------------

    def _slot_prototypes(self, slot: int) -> np.ndarray:
        rows = self._slot_rows[slot]
        return np.stack([self._layers[r].data[row] for r, row in enumerate(rows)])

    def _slot(self, identity_id: int) -> int:
        try:
            return self._slot_of[identity_id]
        except KeyError:
            raise KeyError(f"unknown identity {identity_id!r}") from None

    def _bind_model(self, model: str) -> None:
        if self.model is None:
            self.model = model
        elif self.model != model:
            raise ValueError(f"model: the gallery holds embeddings of {self.model!r}, got {model!r}")

    def _new_token(self) -> int:
        self._next_token += 1
        return self._next_token

    def _create(self, vec: np.ndarray, span: Span, token: int, *, identity_id: int | None = None) -> int:
        if identity_id is None:
            identity_id = self._next_id
        if identity_id in self._slot_of or (self._ids.n and identity_id <= self._ids.data[-1]):
            raise ValueError(f"identity {identity_id} exists or is below the largest id")
        if self._dim is None:
            self._dim = int(vec.shape[0])
            self._layers = [_Buffer(np.float32, (self._dim,)) for _ in range(self.max_prototypes)]
        slot = self._ids.append(identity_id)
        self._slot_of[identity_id] = slot
        self._next_id = max(self._next_id, identity_id + 1)
        self._slot_rows.append([])
        self._spans.append([])
        self._tokens.append([])
        self._add(slot, vec, span, token)
        return identity_id

    def _add(self, slot: int, vec: np.ndarray, span: Span, token: int) -> None:
        self._add_prototype(slot, vec)
        self._add_span(slot, span, token)

    def _add_prototype(self, slot: int, vec: np.ndarray) -> None:
        rows = self._slot_rows[slot]
        if len(rows) < self.max_prototypes:
            r = len(rows)
            rows.append(self._layers[r].append(vec))
            self._layer_slots[r].append(slot)
            self._layer_counts[r].append(1)
            return
        # Full: merge the closest pair among the K prototypes and the new vector (count-weighted mean).
        cand = np.vstack([self._slot_prototypes(slot), vec[None]]).astype(np.float64)  # (K+1, E)
        counts = np.array([self._layer_counts[r].data[row] for r, row in enumerate(rows)] + [1], np.float64)
        sim = cand @ cand.T
        sim[np.tril_indices(len(cand))] = -np.inf
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)  # first max: lowest i, then lowest j
        merged = counts[i] * cand[i] + counts[j] * cand[j]
        norm = float(np.linalg.norm(merged))
        merged = cand[i] if norm < 1e-12 else merged / norm  # antipodal pair: keep the older one
        self._layers[i].data[rows[i]] = merged.astype(np.float32)
        self._layer_counts[i].data[rows[i]] = counts[i] + counts[j]
        if j < len(rows):  # two old prototypes merged: the new vector takes the freed row
            self._layers[j].data[rows[j]] = vec
            self._layer_counts[j].data[rows[j]] = 1

    def _add_span(self, slot: int, span: Span, token: int) -> None:
        spans, tokens = self._spans[slot], self._tokens[slot]
        if token >= 0 and token in tokens:
            k = tokens.index(token)
            old = spans[k]
            spans[k] = Span(old.camera_id, min(old.start, span.start), max(old.end, span.end))
            return
        if span in spans:
            return  # the same sighting again (e.g. restored rows of one span): it adds nothing to the gates
        spans.append(span)
        tokens.append(token)
        if len(spans) > self.max_sightings:
            k = min(range(len(spans)), key=lambda m: spans[m].end)
            del spans[k], tokens[k]

    def _remember_track(self, key: tuple[str, int], entry: _TrackEntry) -> None:
        self._tracks[key] = entry
        self._tracks.move_to_end(key)
        while len(self._tracks) > self.max_tracks:
            self._tracks.popitem(last=False)


# ----------------------------------------------------------------------------------------------------
# Matcher


class Matcher:
    """Assign tracklet embeddings to global identities, batch by batch (docs/matcher.md has the full rule).

    ``threshold`` is the least cosine similarity, in [-1, 1], for joining an identity (equal counts as a
    match; compared in float32). ``model``, when given, must agree with ``gallery.model`` (a gallery without
    one adopts it); otherwise the gallery adopts the model of the first batch. The matcher owns ``gallery``
    from then on: it changes it in :meth:`assign`.
    """

    def __init__(self, gallery: Gallery, topology: Topology, *, threshold: float, model: str | None = None):
        threshold = float(threshold)
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a cosine similarity in [-1, 1], got {threshold}")
        if model is not None:
            gallery._bind_model(model)
        self.gallery = gallery
        self.topology = topology
        self.threshold = threshold

    def assign_by_closing_time(
        self, batch: Sequence[TrackletEmbedding], *, window_s: float = 1.0
    ) -> list[Assignment]:
        """Assign a batch taken from the queue: tracklets are ordered by ``(end_time, key)`` and those closing
        within ``window_s`` of the first of their group are assigned jointly (:meth:`assign`); later groups
        see the identities earlier groups created, so two tracklets of one person that closed a while apart
        in one queue batch can still be linked. Returns assignments in input order; the result does not
        depend on the order the messages arrived in within the batch.
        """
        order = sorted(range(len(batch)), key=lambda i: (batch[i].end_time, batch[i].key))
        out: list[Assignment | None] = [None] * len(batch)
        start = 0
        while start < len(order):
            stop = start + 1
            t0 = batch[order[start]].end_time
            while stop < len(order) and batch[order[stop]].end_time - t0 < window_s:
                stop += 1
            group = order[start:stop]
            for i, a in zip(group, self.assign([batch[i] for i in group]), strict=True):
                out[i] = a
            start = stop
        return out  # type: ignore[return-value]

    def assign(self, batch: Sequence[TrackletEmbedding]) -> list[Assignment]:
        """Assign a batch of tracklets that closed together; return one :class:`Assignment` per input, in order.

        Chunks of one ``(camera_id, track_id)`` run go to one identity: the run's remembered identity when the
        chunks continue it, otherwise the one the group is matched to jointly with the other groups (each
        identity to at most one group, Hungarian algorithm on the similarity margins, ties to lower ids), or
        a new identity (ids in input order). Then every embedding and sighting is added to its identity.

        Raises ValueError, before changing anything, for a model other than the gallery's, an embedding length
        other than the gallery's, or a key that appears twice in the batch. Not idempotent: the caller skips
        tracklets whose key it has already stored (redelivered messages).
        """
        if not batch:
            return []
        g = self.gallery
        self._check(batch)
        g._bind_model(batch[0].model)
        emb = np.stack([t.embedding for t in batch]).astype(np.float64)  # (B, E)
        # the message allows a norm within 1e-3 of 1; prototypes and cosines want it exact
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        ids, sims = g.similarities(emb)  # (B, N), the gallery as it stood before the batch

        groups: dict[tuple[str, int], list[int]] = {}
        for i, t in enumerate(batch):
            groups.setdefault((t.camera_id, int(t.track_id)), []).append(i)
        continued: dict[tuple[str, int], int] = {}  # group -> slot of the identity it continues
        for key, members in groups.items():
            entry = g._tracks.get(key)
            if entry is not None and self._continues(entry, [batch[i] for i in members]):
                continued[key] = g._slot_of[entry.identity_id]

        open_groups = [key for key in groups if key not in continued]
        chosen = self._solve(batch, groups, open_groups, sims, set(continued.values()))
        chosen.update(continued)

        out: list[Assignment] = []
        made: dict[tuple[str, int], int] = {}  # group -> slot of the identity it created in this batch
        tokens: dict[tuple[str, int], int] = {}
        for i, t in enumerate(batch):
            key = (t.camera_id, int(t.track_id))
            span = Span(t.camera_id, float(t.start_time), float(t.end_time))
            if key not in tokens:
                entry = g._tracks.get(key)
                tokens[key] = entry.token if key in continued and entry is not None else g._new_token()
            slot = chosen.get(key)
            if slot is not None:
                g._add(slot, emb[i], span, tokens[key])
                out.append(Assignment(t.key, int(ids[slot]), float(sims[i, slot]), False))
            elif key in made:
                g._add(made[key], emb[i], span, tokens[key])
                out.append(Assignment(t.key, int(g._ids.data[made[key]]), None, True))
            else:
                identity_id = g._create(emb[i], span, tokens[key])
                made[key] = g._slot_of[identity_id]
                out.append(Assignment(t.key, identity_id, None, True))
        for key, members in groups.items():
            self._remember(key, [batch[i] for i in members], out[members[0]].identity_id, tokens[key])
        return out

    # -- steps ---------------------------------------------------------------------------------------

    def _check(self, batch: Sequence[TrackletEmbedding]) -> None:
        g = self.gallery
        expected_model = g.model if g.model is not None else batch[0].model
        dim = g.dim if g.dim is not None else int(batch[0].embedding.shape[0])
        seen: set[tuple[str, int, int]] = set()
        for i, t in enumerate(batch):
            if t.model != expected_model:
                raise ValueError(
                    f"batch[{i}] {t.key}: model {t.model!r}, but the gallery holds embeddings of {expected_model!r}"
                )
            if t.embedding.shape != (dim,):
                raise ValueError(
                    f"batch[{i}] {t.key}: expected an embedding of shape ({dim},), got {t.embedding.shape}"
                )
            if t.key in seen:
                raise ValueError(f"batch[{i}]: the key {t.key} appears twice in the batch")
            seen.add(t.key)

    @staticmethod
    def _continues(entry: _TrackEntry, members: list[TrackletEmbedding]) -> bool:
        """Do these chunks extend the remembered run (later chunks, later times; or earlier ones arriving late)?

        Anything else, e.g. chunk 0 of a track id that a restarted camera worker hands out again, starts a
        new run and is matched by appearance.
        """
        lo = min(int(t.chunk) for t in members)
        hi = max(int(t.chunk) for t in members)
        start = min(float(t.start_time) for t in members)
        end = max(float(t.end_time) for t in members)
        return (lo > entry.hi_chunk and start >= entry.hi_end) or (
            hi < entry.lo_chunk and end <= entry.lo_start
        )

    def _solve(
        self,
        batch: Sequence[TrackletEmbedding],
        groups: dict[tuple[str, int], list[int]],
        open_groups: list[tuple[str, int]],
        sims: np.ndarray,
        claimed: set[int],
    ) -> dict[tuple[str, int], int]:
        """Joint assignment of the open groups to existing identities: group -> slot, unmatched groups absent."""
        n_groups = len(open_groups)
        if n_groups == 0 or sims.shape[1] == 0:
            return {}
        thr = np.float32(self.threshold)
        # Integer costs: a match is worth (q + 1) * mult - rank, q = margin on a 2**-bits grid and rank the
        # identity's position among the candidates, so ties in q go to lower ids; a new identity is worth 0.
        # At most n_groups**2 candidate columns, so ranks sum below mult; the bits keep every total of n_groups
        # worths below 2**53, exact in float64 (the grid only coarsens beyond about 200 groups).
        mult = n_groups**3 + 1
        bits = min(_MARGIN_BITS, 51 - n_groups.bit_length() - mult.bit_length())
        feasible: list[list[tuple[int, int]]] = []
        for key in open_groups:
            members = groups[key]
            gsim = sims[members].max(axis=0)  # (N,): the group's best member against each identity
            cand = np.flatnonzero(gsim >= thr)
            q = np.floor((gsim[cand].astype(np.float64) - float(thr)) * 2.0**bits).astype(np.int64)
            found: list[tuple[int, int]] = []
            # Only the n_groups best feasible identities of a group can be in an optimal joint assignment.
            for k in np.lexsort((cand, -q)):
                slot = int(cand[k])
                if slot in claimed or not all(
                    self.topology.allows(
                        self.gallery._spans[slot],
                        batch[i].camera_id,
                        float(batch[i].start_time),
                        float(batch[i].end_time),
                    )
                    for i in members
                ):
                    continue
                found.append((slot, int(q[k])))
                if len(found) == n_groups:
                    break
            feasible.append(found)
        cols = sorted({slot for found in feasible for slot, _ in found})
        if not cols:
            return {}
        rank = {slot: r for r, slot in enumerate(cols)}
        cost = np.full((n_groups, len(cols) + n_groups), np.inf)
        for r, found in enumerate(feasible):
            for slot, q in found:
                cost[r, rank[slot]] = -float((q + 1) * mult - rank[slot])
            cost[r, len(cols) + r] = 0.0  # this group starts a new identity
        rows, picked = linear_sum_assignment(cost)
        return {open_groups[r]: cols[c] for r, c in zip(rows, picked, strict=True) if c < len(cols)}

    def _remember(self, key: tuple[str, int], members: list[TrackletEmbedding], identity_id: int, token: int):
        g = self.gallery
        lo = min(int(t.chunk) for t in members)
        hi = max(int(t.chunk) for t in members)
        start = min(float(t.start_time) for t in members)
        end = max(float(t.end_time) for t in members)
        entry = g._tracks.get(key)
        if entry is not None and entry.token == token:  # the same run, extended
            entry = _TrackEntry(
                identity_id,
                token,
                min(lo, entry.lo_chunk),
                max(hi, entry.hi_chunk),
                min(start, entry.lo_start),
                max(end, entry.hi_end),
            )
        else:
            entry = _TrackEntry(identity_id, token, lo, hi, start, end)
        g._remember_track(key, entry)
