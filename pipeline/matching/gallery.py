"""The gallery of global identities: prototype embeddings, sighting history and the track -> identity map.

Pure logic (no I/O). :class:`Gallery` keeps a bounded, diverse set of prototype embeddings per identity in
contiguous float32 matrices, so that the similarity of a batch to every identity is a few matrix products
plus a scatter-max; a bounded sighting history per identity for the topology gates; and the map
``(camera_id, track_id) -> identity`` that keeps the chunks of one track together. :meth:`Gallery.restore`
rebuilds it from :class:`SavedTracklet` records (what the store kept). The :class:`~pipeline.matching.matcher.Matcher`
decides; the gallery remembers (``docs/matcher.md``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.matching.topology import Span

__all__ = ["Gallery", "SavedTracklet"]


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

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the filled rows where ``mask`` (n,) bool holds, in order (in place)."""
        kept = self._a[: self.n][mask]
        self._a[: kept.shape[0]] = kept
        self.n = int(kept.shape[0])


@dataclass(frozen=True)
class SavedTracklet:
    """One decided tracklet as the store keeps it: what :meth:`Gallery.restore` rebuilds a gallery from.

    ``identity_id`` it was assigned to; ``camera_id`` saw it from ``start`` to ``end`` (POSIX seconds,
    ``start <= end``); ``vector`` (E,) its embedding (renormalised on restore). ``track_id``, ``chunk`` and
    ``run`` (the camera worker run's session key) are given together or not at all: with them, the chunks
    of one run merge into one sighting and the track map is restored too.
    """

    identity_id: int
    camera_id: str
    start: float
    end: float
    vector: np.ndarray
    track_id: int | None = None
    chunk: int | None = None
    run: str | None = None


@dataclass
class TrackEntry:
    """What the gallery remembers of one track run: its identity and the chunks and times seen so far.

    Internal to :mod:`pipeline.matching` (the matcher reads and extends it through the gallery)."""

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
      passes the largest stored id + 1, or uses :meth:`restore`). They only grow: :meth:`drop` removes an
      identity (forgotten or pruned) but never lowers ``next_id``, so its id is not handed out again.
    - **Prototypes**: at most ``max_prototypes`` unit vectors per identity (no default here: the composition
      root passes ``matcher.max_prototypes`` of the config schema, which holds it), each with a count of the
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
        max_prototypes: int,
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
        self._tracks: OrderedDict[tuple[str, int], TrackEntry] = OrderedDict()
        self._next_token = 0
        self._latest_end: float | None = None

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

    @property
    def latest_end(self) -> float | None:
        """The latest sighting end (POSIX s) ever added, dropped identities included: how far in footage
        time the decisions have come (``None`` while nothing was added)."""
        return self._latest_end

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

    def drop(self, identity_ids: Iterable[int]) -> list[int]:
        """Remove identities (a forgotten or pruned person) so that nothing is matched to them again: their
        prototypes, sightings and every remembered track run that led to them (the next chunk of such a track
        is matched by appearance, like a new track). Unknown ids are ignored (dropping is idempotent).
        ``next_id`` is unchanged, so a dropped id is never handed out again. Returns the ids dropped, sorted.

        O(size of the gallery): the layers are compacted, keeping every invariant (slots in increasing id
        order, layer 0 in slot order), so the gallery then decides exactly as one restored without them.
        """
        gone = sorted({int(i) for i in identity_ids if int(i) in self._slot_of})
        if not gone:
            return []
        n = self._ids.n
        keep_slot = np.ones(n, bool)
        keep_slot[[self._slot_of[i] for i in gone]] = False
        new_slot = np.cumsum(keep_slot) - 1  # old slot -> new slot (meaningful where kept)
        for r, layer in enumerate(self._layers):
            owners = self._layer_slots[r].data
            mask = keep_slot[owners]
            layer.keep(mask)
            self._layer_counts[r].keep(mask)
            self._layer_slots[r].keep(mask)
            self._layer_slots[r].data[:] = new_slot[self._layer_slots[r].data]
        kept = np.flatnonzero(keep_slot)
        self._ids.keep(keep_slot)
        self._slot_of = {int(self._ids.data[s]): s for s in range(self._ids.n)}
        self._spans = [self._spans[s] for s in kept]
        self._tokens = [self._tokens[s] for s in kept]
        self._slot_rows = [[] for _ in kept]
        for r in range(len(self._layers)):  # rows of a layer are in order, so each slot's list grows by layer
            for row, slot in enumerate(self._layer_slots[r].data.tolist()):
                self._slot_rows[slot].append(row)
        dropped = set(gone)
        for key in [k for k, e in self._tracks.items() if e.identity_id in dropped]:
            del self._tracks[key]
        return gone

    @classmethod
    def restore(
        cls,
        rows: Iterable[SavedTracklet],
        *,
        max_prototypes: int,
        max_sightings: int = 64,
        max_tracks: int = 100_000,
        next_id: int = 1,
        model: str | None = None,
    ) -> Gallery:
        """Rebuild a gallery from stored :class:`SavedTracklet` records (any order).

        Rows are replayed by ``(end, camera_id, track_id, chunk)`` -- the order a live matcher decides in --
        when every row has its track (without: by ``(end, start, identity_id)``), each identity created from
        its earliest row, the others added as :meth:`add` does; so prototypes and sightings come out as the
        live gallery had them. With tracks the chunks of one run merge into one sighting, and the track map
        remembers each ``(camera_id, track_id)``'s latest run, so the next chunk of a track that was open at
        a restart continues its identity as it would have without the restart.
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
        parsed: list[tuple[int, Span, np.ndarray, tuple[int, int, str] | None]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, SavedTracklet):
                raise ValueError(f"rows[{i}]: expected a SavedTracklet, got {type(row).__name__}")
            identity_id, camera_id = row.identity_id, row.camera_id
            if isinstance(identity_id, bool) or not isinstance(identity_id, int | np.integer):
                raise ValueError(f"rows[{i}]: identity_id must be an integer, got {identity_id!r}")
            if not isinstance(camera_id, str):
                raise ValueError(f"rows[{i}]: camera_id must be a string, got {camera_id!r}")
            start, end = float(row.start), float(row.end)
            if not (math.isfinite(start) and math.isfinite(end) and start <= end):
                raise ValueError(f"rows[{i}]: expected finite start <= end, got ({start}, {end})")
            parts = (row.track_id, row.chunk, row.run)
            if any(p is None for p in parts) and not all(p is None for p in parts):
                raise ValueError(f"rows[{i}]: track_id, chunk and run go together, got {parts!r}")
            track = None
            if row.track_id is not None:
                try:
                    track = (int(row.track_id), int(row.chunk), str(row.run))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise ValueError(
                        f"rows[{i}]: track_id and chunk must be integers, got {parts!r}"
                    ) from None
            vec = _unit(row.vector, f"rows[{i}].vector", parsed[0][2].shape[0] if parsed else None)
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
        tokens: dict[tuple[str, int, str], int] = {}
        runs: dict[tuple[str, int, str], list[int]] = {}

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
        latest: dict[tuple[str, int], tuple[float, tuple[str, int, str]]] = {}
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
                TrackEntry(
                    parsed[last][0],
                    tokens[run],
                    min(chunks),
                    max(chunks),
                    min(parsed[i][1].start for i in members),
                    max(parsed[i][1].end for i in members),
                ),
            )
        return gallery

    # -- internals (pipeline.matching.matcher.Matcher uses them too) -----------------------------------

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
        if self._latest_end is None or span.end > self._latest_end:
            self._latest_end = span.end
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

    def _remember_track(self, key: tuple[str, int], entry: TrackEntry) -> None:
        self._tracks[key] = entry
        self._tracks.move_to_end(key)
        while len(self._tracks) > self.max_tracks:
            self._tracks.popitem(last=False)
