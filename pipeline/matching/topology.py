"""Camera topology: may one person produce both of two sightings?

Pure logic (no I/O). :class:`Topology` answers from camera links (with transit windows), overlapping camera
pairs and the rule that nobody is in two non-overlapping places at once; :class:`Span` is one sighting. The
matcher (:mod:`pipeline.matching.matcher`) uses it as the gate before any similarity counts
(``docs/matcher.md``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["Span", "Topology"]


@dataclass(frozen=True)
class Span:
    """One sighting: ``camera_id`` saw the person from ``start`` to ``end`` (POSIX seconds, start <= end)."""

    camera_id: str
    start: float
    end: float


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
