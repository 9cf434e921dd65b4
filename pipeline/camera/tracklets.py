"""Tracklet builder: one camera's per-frame tracker output -> closed, bounded :class:`Tracklet` pieces.

One :class:`TrackletBuilder` per camera sits after the tracker. Each call to :meth:`TrackletBuilder.update`
takes the frame, the detector output and the tracker output of that frame and returns the tracklets that
closed at this frame; :meth:`TrackletBuilder.flush` closes everything at the end of the stream.

Per track id the builder keeps one open *piece*:

- **Seen frames.** Every frame in which the track id appears in :class:`Tracks` counts as seen: it extends
  ``first_frame``/``last_frame`` and ``num_frames`` and resets the gap counter, whether or not it yields a
  crop.
- **Crops.** A seen frame yields a crop only if the track was matched to a detection this frame
  (``det_indices[i]`` is a valid index into the frame's :class:`Detections`) and the *detected* box passes
  the quality filters, checked in this order; the first one that fails is counted in
  ``stats["crops_rejected"]``:

  ``unmatched``  det index is -1 or out of range, or the detected box is not finite;
  ``roi``        the box's bottom-centre (feet point) lies outside the optional ROI polygon;
  ``low_conf``   the detection score is below ``min_conf``;
  ``small``      the box clipped to the frame is lower than ``min_box_height`` or narrower than
                 ``min_box_width``;
  ``occluded``   more than ``max_overlap`` of the detected box's area is covered by another detection of the
                 same frame (the crop would show two people; 1.0 disables the filter);
  ``border``     the box comes within ``border_margin`` pixels of the frame border (x1 < m, y1 < m,
                 x2 > W - m or y2 > H - m), i.e. the person is probably cut by the image edge.

  The crop is the detected box clipped to the frame, resized to ``crop_size`` (H, W) with bilinear
  interpolation; it is a fresh array, never a view of the frame. Its row in the tracklet records the frame
  index, timestamp, clipped box (xyxy float) and detection score.
- **Bounded memory.** At most ``max_crops`` crops are held per open piece, whatever its length. The frames
  that pass the filters are numbered ``q = 0, 1, 2, ...`` and the piece keeps exactly those with
  ``q % stride == 0``. ``stride`` starts at 1; when a new candidate arrives and the buffer already holds
  ``max_crops`` crops, the stride doubles and the buffer is decimated to the crops whose ``q`` is a multiple
  of the new stride. So the kept crops are always evenly spaced over the usable frames seen so far (the first
  one is the first usable frame, the last one is less than ``stride`` usable frames from the end), and once a
  piece has outgrown ``max_crops`` it holds between ``ceil(max_crops / 2)`` and ``max_crops`` crops. A frame
  is only cropped and resized when it will be kept, so the cost per frame is O(1) amortised. Numbering the
  *usable* frames rather than all seen frames avoids aliasing: with a detector that runs on every other
  frame, a stride over all frames would land on the unmatched ones only.
- **Per-frame boxes.** Every seen frame also records the tracker's box (``Tracks.boxes``, the tracker's own
  estimate, not the detection), clipped to the frame, as float32 xyxy: the tracklet carries them as
  ``track_frames`` (F,) int64, strictly increasing within ``[first_frame, last_frame]`` and ``F ==
  num_frames``, and ``track_boxes`` (F, 4), what the store keeps to draw and export tracks. Unlike the crops
  these grow with the piece length: 8 + 16 bytes per seen frame, and a piece is cut after ``max_length``
  seen frames, so each open piece holds (allocated when it opens) ``24 * max_length`` bytes (7.2 kB at the
  default 300) and memory stays bounded by that times the number of open tracks. A non-finite tracker box
  is recorded as the track's previous box (an empty box at the origin on its first frame), so every seen
  frame keeps its row.
- **Closing.** A piece closes when its track has been absent from ``Tracks`` for more than ``max_gap``
  consecutive frames (reason ``"gap"``; frame indices count, so frames the source skipped count as absent),
  when it has been seen in ``max_length`` frames (reason ``"max_length"``: the track continues in the next
  frame it is seen as chunk + 1), or at :meth:`flush` (reason ``"flush"``). A closed piece with fewer than
  ``min_length`` crops is dropped (``stats["dropped_short"]``). Because the sampler keeps at least
  ``ceil(max_crops / 2)`` crops once it decimates, ``min_length <= ceil(max_crops / 2)`` is required, so
  "enough usable frames" and "enough kept crops" mean the same thing.
- **Chunk numbers** count from 0 per track id and go up by one for every piece of that track id (after a
  ``max_length`` split and also when a track id reappears after a ``gap`` close), so the natural key
  ``(camera_id, track_id, chunk)`` stays unique. The next chunk number of a closed track id is remembered
  for ``forget_after`` frames after it closed, then forgotten, so memory does not grow with the number of
  track ids a long-running camera has seen.
- **Close reasons.** The :class:`Tracklet` message has no field for it: after each :meth:`update` or
  :meth:`flush`, :attr:`TrackletBuilder.last_close_reasons` maps the key of every tracklet that call
  returned to its reason. It only describes the latest call.

Tracklets that close in the same call are returned sorted by ``(track_id, chunk)``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from pipeline.transport.messages import Detections, Frame, Tracklet, Tracks

if TYPE_CHECKING:
    from pipeline.config import TrackletConfig

__all__ = ["TrackletBuilder", "CLOSE_REASONS", "REJECT_REASONS", "covered_fraction"]

CLOSE_REASONS = ("gap", "max_length", "flush")
REJECT_REASONS = ("unmatched", "roi", "low_conf", "small", "occluded", "border")


class _StrideSampler:
    """Keep at most ``capacity`` items of a stream, evenly spaced: positions that are multiples of a stride
    that doubles (decimating the buffer by 2) whenever a new kept item would overflow the buffer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.stride = 1
        self.count = 0
        self.items: list[tuple[int, Any]] = []  # (position in the stream, item)

    def offer(self, make_item: Callable[[], Any]) -> bool:
        """Count one stream item; call ``make_item`` and keep its result only if it falls on the grid."""
        pos = self.count
        self.count += 1
        if pos % self.stride:
            return False
        while len(self.items) >= self.capacity:
            self.stride *= 2
            self.items = [(p, it) for p, it in self.items if p % self.stride == 0]
            if pos % self.stride:
                return False
        self.items.append((pos, make_item()))
        return True


@dataclass
class _Crop:
    frame_index: int
    timestamp: float
    box: np.ndarray  # (4,) float32 xyxy, clipped to the frame
    score: float
    image: np.ndarray  # (H, W, 3) uint8


@dataclass
class _Piece:
    track_id: int
    chunk: int
    first_frame: int
    start_time: float
    last_frame: int
    end_time: float
    sampler: _StrideSampler
    num_frames: int = 0
    # every seen frame and the tracker's clipped box in it: the first num_frames rows (max_length rows)
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


@dataclass
class _Stats:
    opened: int = 0
    closed: int = 0
    dropped_short: int = 0
    closed_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLOSE_REASONS, 0))
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))


def covered_fraction(boxes: np.ndarray, i: int) -> float:
    """The largest share of box ``i``'s area that one other box of ``boxes`` (N, 4) xyxy covers, in [0, 1]
    (intersection over box ``i``'s area; 0 for a box alone or of zero area)."""
    b = boxes[i]
    area = float((b[2] - b[0]) * (b[3] - b[1]))
    others = np.delete(boxes, i, axis=0)
    if area <= 0 or len(others) == 0:
        return 0.0
    iw = np.clip(np.minimum(others[:, 2], b[2]) - np.maximum(others[:, 0], b[0]), 0, None)
    ih = np.clip(np.minimum(others[:, 3], b[3]) - np.maximum(others[:, 1], b[1]), 0, None)
    return float(np.max(iw * ih) / area)


class TrackletBuilder:
    """Cut one camera's tracks into closed tracklets with a bounded, evenly spread sample of quality crops.

    See the module docstring for the full contract (crops, filters, memory bound, closing rules, chunk
    numbers). Frames must be given in strictly increasing ``frame_index`` order, one call per frame, also when
    there are no tracks. ``roi`` is ``None`` or a polygon of >= 3 ``(x, y)`` pixel points; a detection whose
    feet point lies outside it (points on the edge count as inside) yields no crop. ``forget_after`` is how
    many frames the next chunk number of a closed track id is remembered (for a track id that comes back).
    ``crop_size`` is ``(H, W)``.

    Every setting is required: the defaults and the rules they must satisfy (``min_length <= ceil(max_crops /
    2)`` and ``<= max_length``, box sizes > 0, ...) are :class:`~pipeline.config.TrackletConfig`'s and the ROI
    rules :class:`~pipeline.config.CameraConfig`'s, which validate them; build from those with
    :meth:`from_config`.

    Raises ``ValueError`` for a frame of another camera, a frame index that does not increase, or duplicate
    track ids in one :class:`Tracks`.
    """

    def __init__(
        self,
        camera_id: str,
        *,
        min_length: int,
        max_length: int,
        max_gap: int,
        min_box_height: int,
        min_box_width: int,
        min_conf: float,
        border_margin: int,
        max_overlap: float,
        max_crops: int,
        crop_size: tuple[int, int],
        roi: Sequence[tuple[float, float]] | None,
        forget_after: int,
    ) -> None:
        self.camera_id = camera_id
        self.min_length = int(min_length)
        self.max_length = int(max_length)
        self.max_gap = int(max_gap)
        self.min_box_height = int(min_box_height)
        self.min_box_width = int(min_box_width)
        self.min_conf = float(min_conf)
        self.border_margin = int(border_margin)
        self.max_overlap = float(max_overlap)
        self.max_crops = int(max_crops)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.forget_after = int(forget_after)
        # (P, 2) -> (P, 1, 2), the contour layout OpenCV takes
        self._roi = None if roi is None else np.asarray(roi, dtype=np.float32).reshape(-1, 1, 2)
        self._open: dict[int, _Piece] = {}
        # track id -> (next chunk number, frame index at which its last piece closed), oldest close first
        self._retired: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self._last_index: int | None = None
        self._last_time: float | None = None
        self._stats = _Stats()
        self.last_close_reasons: dict[tuple[str, int, int], str] = {}

    @classmethod
    def from_config(
        cls, camera_id: str, section: TrackletConfig, *, roi: Sequence[tuple[float, float]] | None
    ) -> TrackletBuilder:
        """A builder for camera ``camera_id`` with the settings of a validated ``tracklets:`` section and that
        camera's ``roi`` (``cameras[].roi``)."""
        return cls(
            camera_id,
            min_length=section.min_length,
            max_length=section.max_length,
            max_gap=section.max_gap,
            min_box_height=section.min_box_height,
            min_box_width=section.min_box_width,
            min_conf=section.min_conf,
            border_margin=section.border_margin,
            max_overlap=section.max_overlap,
            max_crops=section.max_crops,
            crop_size=(section.crop_height, section.crop_width),
            roi=roi,
            forget_after=section.forget_after,
        )

    # ------------------------------------------------------------------ public API

    def update(self, frame: Frame, detections: Detections, tracks: Tracks) -> list[Tracklet]:
        """Add one frame's tracks; return the tracklets that closed at this frame, by (track id, chunk).

        ``tracks.det_indices[i]`` indexes ``detections`` of the same frame; -1 (or any invalid index) means
        the track was not matched this frame: it counts as seen but gives no crop.
        """
        if frame.camera_id != self.camera_id:
            raise ValueError(f"frame.camera_id: expected {self.camera_id!r}, got {frame.camera_id!r}")
        f = int(frame.frame_index)
        if self._last_index is not None and f <= self._last_index:
            raise ValueError(
                f"frame.frame_index: expected > {self._last_index} (strictly increasing), got {f}"
            )
        ids = tracks.track_ids
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise ValueError(f"Tracks.track_ids: expected unique ids, got {ids.tolist()}")
        self._last_index = f
        ts = float(frame.timestamp)
        self._last_time = ts
        closed: list[tuple[_Piece, str]] = []
        for i in range(len(tracks)):
            tid = int(ids[i])
            piece = self._open.get(tid)
            if piece is not None and f - piece.last_frame - 1 > self.max_gap:
                closed.append((self._close(tid, f), "gap"))
                piece = None
            if piece is None:
                piece = self._open_piece(tid, f, ts)
            self._observe(piece, frame, detections, int(tracks.det_indices[i]), tracks.boxes[i])
            if piece.num_frames >= self.max_length:
                closed.append((self._close(tid, f), "max_length"))
        present = {int(t) for t in ids}
        lost = [t for t, p in self._open.items() if t not in present and f - p.last_frame > self.max_gap]
        closed.extend((self._close(t, f), "gap") for t in lost)
        while self._retired and f - next(iter(self._retired.values()))[1] > self.forget_after:
            self._retired.popitem(last=False)
        return self._emit(closed)

    def flush(self) -> list[Tracklet]:
        """End of stream: close every open piece (reason ``"flush"``) and return those long enough."""
        f = self._last_index if self._last_index is not None else 0
        return self._emit([(self._close(t, f), "flush") for t in list(self._open)])

    @property
    def stats(self) -> dict[str, Any]:
        """Counters since construction (a copy): ``opened``, ``closed`` (emitted + dropped), ``emitted``,
        ``dropped_short``, ``open`` (pieces open now), ``closed_by`` {close reason: n} and ``crops_rejected``
        {filter reason: n frames}."""
        s = self._stats
        return {
            "opened": s.opened,
            "closed": s.closed,
            "emitted": s.closed - s.dropped_short,
            "dropped_short": s.dropped_short,
            "open": len(self._open),
            "closed_by": dict(s.closed_by),
            "crops_rejected": dict(s.rejected),
        }

    @property
    def watermark(self) -> float:
        """A lower bound on the ``end_time`` of every tracklet this builder emits from now on (POSIX s).

        Open pieces end no earlier than they were last seen, and pieces opened later start at a later frame:
        so the least of the last frame's timestamp and the open pieces' end times. ``-inf`` before the first
        frame. (A live clock that steps back can break the bound; the matcher treats such a tracklet as late.)
        """
        if self._last_time is None:
            return -math.inf
        return min([self._last_time, *(p.end_time for p in self._open.values())])

    def watermark_before(self, next_time: float) -> float:
        """:attr:`watermark` when the next frame is known to have timestamp ``next_time`` (a camera that has
        not started yet is bounded by its first frame, not by ``-inf``)."""
        return min([float(next_time), *(p.end_time for p in self._open.values())])

    @property
    def buffered_crops(self) -> int:
        """Crops held right now over all open pieces (each piece holds at most ``max_crops``)."""
        return sum(len(p.sampler.items) for p in self._open.values())

    # ------------------------------------------------------------------ internals

    def _open_piece(self, tid: int, f: int, ts: float) -> _Piece:
        chunk = self._retired.pop(tid)[0] if tid in self._retired else 0
        piece = _Piece(tid, chunk, f, ts, f, ts, _StrideSampler(self.max_crops))
        # a piece closes when seen in max_length frames: its per-frame rows never outgrow these
        piece.frames = np.empty(self.max_length, np.int64)
        piece.boxes = np.empty((self.max_length, 4), np.float32)
        self._open[tid] = piece
        self._stats.opened += 1
        return piece

    def _close(self, tid: int, f: int) -> _Piece:
        piece = self._open.pop(tid)
        self._retired[tid] = (piece.chunk + 1, f)
        self._retired.move_to_end(tid)
        return piece

    def _observe(
        self, piece: _Piece, frame: Frame, detections: Detections, det_index: int, track_box: np.ndarray
    ) -> None:
        f, ts = int(frame.frame_index), float(frame.timestamp)
        n = piece.num_frames
        piece.frames[n] = f
        piece.boxes[n] = self._clip(frame, track_box, piece.boxes[n - 1] if n else None)
        piece.num_frames += 1
        piece.last_frame = f
        piece.end_time = max(piece.end_time, ts)  # a live clock may step back; keep the span ordered
        reason, clipped = self._check(frame, detections, det_index)
        if reason is not None:
            self._stats.rejected[reason] += 1
            return
        x1, y1, x2, y2 = clipped
        score = float(detections.scores[det_index])

        def make() -> _Crop:
            patch = frame.image[y1:y2, x1:x2]
            image = cv2.resize(patch, (self.crop_size[1], self.crop_size[0]), interpolation=cv2.INTER_LINEAR)
            box = np.array([x1, y1, x2, y2], np.float32)
            return _Crop(f, ts, box, score, np.ascontiguousarray(image))

        piece.sampler.offer(make)

    @staticmethod
    def _clip(frame: Frame, box: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """The tracker's box clipped to the frame, (4,) float32 xyxy; a non-finite one repeats ``previous``."""
        b = np.asarray(box, dtype=np.float32)
        if not np.isfinite(b).all():
            return previous if previous is not None else np.zeros(4, np.float32)
        w, h = np.float32(frame.width), np.float32(frame.height)
        return np.clip(b, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)

    def _check(
        self, frame: Frame, detections: Detections, det_index: int
    ) -> tuple[str | None, tuple[int, int, int, int]]:
        """First failing filter (or None) and the detected box clipped to the frame as integer xyxy."""
        none = (0, 0, 0, 0)
        if not 0 <= det_index < len(detections):
            return "unmatched", none
        box = detections.boxes[det_index]
        if not np.isfinite(box).all():
            return "unmatched", none
        bx1, by1, bx2, by2 = (float(v) for v in box)
        if self._roi is not None:
            feet = ((bx1 + bx2) / 2.0, by2)
            if cv2.pointPolygonTest(self._roi, feet, False) < 0:
                return "roi", none
        if float(detections.scores[det_index]) < self.min_conf:
            return "low_conf", none
        w, h = frame.width, frame.height
        x1, y1 = max(0, math.floor(bx1)), max(0, math.floor(by1))
        x2, y2 = min(w, math.ceil(bx2)), min(h, math.ceil(by2))
        if y2 - y1 < self.min_box_height or x2 - x1 < self.min_box_width:
            return "small", none
        if self.max_overlap < 1.0 and covered_fraction(detections.boxes, det_index) > self.max_overlap:
            return "occluded", none
        m = self.border_margin
        if bx1 < m or by1 < m or bx2 > w - m or by2 > h - m:
            return "border", none
        return None, (x1, y1, x2, y2)

    def _emit(self, closed: list[tuple[_Piece, str]]) -> list[Tracklet]:
        out: list[Tracklet] = []
        reasons: dict[tuple[str, int, int], str] = {}
        for piece, reason in sorted(closed, key=lambda pr: (pr[0].track_id, pr[0].chunk)):
            self._stats.closed += 1
            self._stats.closed_by[reason] += 1
            crops = [c for _, c in piece.sampler.items]
            if len(crops) < self.min_length:
                self._stats.dropped_short += 1
                continue
            t = Tracklet(
                camera_id=self.camera_id,
                track_id=piece.track_id,
                chunk=piece.chunk,
                first_frame=piece.first_frame,
                last_frame=piece.last_frame,
                start_time=piece.start_time,
                end_time=piece.end_time,
                num_frames=piece.num_frames,
                frame_indices=np.array([c.frame_index for c in crops], np.int64),
                timestamps=np.array([c.timestamp for c in crops], np.float64),
                boxes=np.stack([c.box for c in crops]),
                scores=np.array([c.score for c in crops], np.float32),
                crops=np.stack([c.image for c in crops]),
                track_frames=piece.frames[: piece.num_frames].copy(),
                track_boxes=piece.boxes[: piece.num_frames].copy(),
            )
            reasons[t.key] = reason
            out.append(t)
        self.last_close_reasons = reasons
        return out
