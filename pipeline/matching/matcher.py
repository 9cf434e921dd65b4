"""Cross-camera matcher: link tracklet embeddings from several cameras into global identities.

Pure logic (no I/O, SQL or Redis). :class:`Matcher` assigns a batch of
:class:`~pipeline.transport.messages.TrackletEmbedding` jointly (Hungarian algorithm) to the identities of a
:class:`~pipeline.matching.gallery.Gallery`, gated by a :class:`~pipeline.matching.topology.Topology`, and
creates identities for the tracklets nothing fits; each decision is an :class:`Assignment`.

The decision rule, precisely and with a worked example, is in ``docs/matcher.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.matching.centering import CameraCentering
from pipeline.matching.gallery import Gallery, TrackEntry
from pipeline.matching.topology import Span, Topology
from pipeline.transport.messages import TrackletEmbedding

__all__ = ["Assignment", "Matcher"]

# Similarity margins above the threshold are compared on a grid of 2**-_MARGIN_BITS (about 1e-6) so that
# the joint assignment can break exact ties by identity id with integer-valued costs (docs/matcher.md).
_MARGIN_BITS = 20


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


class Matcher:
    """Assign tracklet embeddings to global identities, batch by batch (docs/matcher.md has the full rule).

    ``threshold`` is the least cosine similarity, in [-1, 1], for joining an identity (equal counts as a
    match; compared in float32). ``model``, when given, must agree with ``gallery.model`` (a gallery without
    one adopts it); otherwise the gallery adopts the model of the first batch. No defaults here: the config
    schema (``matcher`` section) holds them and the composition root passes them. The matcher owns ``gallery``
    from then on: it changes it in :meth:`assign`.

    ``centering`` (docs/matcher.md, §3a): each batch is compared, and added to the gallery, with its cameras'
    mean embeddings taken out (the means as they stood before the batch), and then added to those means; the
    threshold is then on the centred scale. None compares the embeddings as they come.
    """

    def __init__(
        self,
        gallery: Gallery,
        topology: Topology,
        *,
        threshold: float,
        model: str | None = None,
        centering: CameraCentering | None = None,
    ):
        threshold = float(threshold)
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold: expected a cosine similarity in [-1, 1], got {threshold}")
        if model is not None:
            gallery._bind_model(model)
        self.gallery = gallery
        self.topology = topology
        self.threshold = threshold
        if centering is not None and gallery.dim is not None and centering.dim != gallery.dim:
            raise ValueError(f"centering: a prior of {centering.dim} values for a gallery of {gallery.dim}")
        self.centering = centering

    def assign_by_closing_time(
        self, batch: Sequence[TrackletEmbedding], *, window_s: float
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
        cams = [t.camera_id for t in batch]
        raw = emb
        if self.centering is not None:  # compared (and kept) without the camera's mean, as it stood before
            emb = self.centering.center(cams, raw)
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
        if self.centering is not None:
            self.centering.observe(cams, raw)
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
    def _continues(entry: TrackEntry, members: list[TrackletEmbedding]) -> bool:
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
            entry = TrackEntry(
                identity_id,
                token,
                min(lo, entry.lo_chunk),
                max(hi, entry.hi_chunk),
                min(start, entry.lo_start),
                max(end, entry.hi_end),
            )
        else:
            entry = TrackEntry(identity_id, token, lo, hi, start, end)
        g._remember_track(key, entry)
