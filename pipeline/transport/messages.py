"""Typed messages exchanged between pipeline stages.

Every message is a frozen dataclass whose arrays are columns: row ``i`` of every array describes the same
object. Constructors validate shapes and dtypes and raise ``ValueError`` naming the field, the expected shape
and what arrived, so a malformed message fails where it is made, not three stages later.

Coordinates are pixels in the original frame, boxes are ``xyxy`` (x1, y1, x2, y2), timestamps are POSIX
seconds (float, UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from common.pictures import PICTURE_KINDS, Picture

__all__ = [
    "Frame",
    "Detections",
    "Tracks",
    "Tracklet",
    "TrackletEmbedding",
    "TrackletPicture",
    "PICTURE_KINDS",
    "Order",
    "Progress",
]

# A tracklet's picture is the one record shared with the store (common/pictures.py).
TrackletPicture = Picture


def _column(name: str, value, dtype, n: int | None, tail: tuple[int, ...] = ()) -> np.ndarray:
    """Return ``value`` as a contiguous array of ``dtype`` with shape ``(n, *tail)``; raise naming ``name``."""
    arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
    if arr.size == 0 and n in (None, 0):
        arr = arr.reshape((0, *tail))
    expected = ("N" if n is None else n, *tail)
    if arr.ndim != 1 + len(tail) or arr.shape[1:] != tail or (n is not None and arr.shape[0] != n):
        raise ValueError(f"{name}: expected shape {expected}, got {arr.shape}")
    return arr


@dataclass(frozen=True)
class Frame:
    """One decoded frame of one camera.

    ``image`` is (H, W, 3) uint8 BGR as OpenCV decodes it. ``frame_index`` counts from 0 per camera;
    ``timestamp`` is the camera's start time plus the presentation time for files, the wall clock for live
    sources.
    """

    camera_id: str
    frame_index: int
    timestamp: float
    image: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            got = getattr(img, "shape", type(img).__name__), getattr(img, "dtype", None)
            raise ValueError(f"Frame.image: expected (H, W, 3) uint8, got {got}")

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class Detections:
    """Detector output for one frame: ``boxes`` (N, 4) float32 xyxy, ``scores`` (N,), ``class_ids`` (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        boxes = _column("Detections.boxes", self.boxes, np.float32, None, (4,))
        n = boxes.shape[0]
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", _column("Detections.scores", self.scores, np.float32, n))
        object.__setattr__(self, "class_ids", _column("Detections.class_ids", self.class_ids, np.int64, n))

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, mask: np.ndarray) -> Detections:
        """Rows where ``mask`` (bool (N,) or integer indices) holds."""
        return Detections(self.boxes[mask], self.scores[mask], self.class_ids[mask])

    def as_array(self) -> np.ndarray:
        """(N, 6) float32 ``[x1, y1, x2, y2, score, class]``: the layout boxmot's ``update`` takes."""
        return np.concatenate(
            [self.boxes, self.scores[:, None], self.class_ids[:, None].astype(np.float32)], axis=1
        ).astype(np.float32)


@dataclass(frozen=True)
class Tracks:
    """Tracker output for one frame.

    ``track_ids`` (M,) int64 are unique per camera; ``boxes`` (M, 4) xyxy as the tracker estimates them;
    ``det_indices`` (M,) int64 index the :class:`Detections` of the same frame the track was matched to,
    so a caller can crop the detected box rather than the tracker's smoothed one.
    """

    track_ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    det_indices: np.ndarray

    def __post_init__(self) -> None:
        ids = _column("Tracks.track_ids", self.track_ids, np.int64, None)
        m = ids.shape[0]
        object.__setattr__(self, "track_ids", ids)
        object.__setattr__(self, "boxes", _column("Tracks.boxes", self.boxes, np.float32, m, (4,)))
        object.__setattr__(self, "scores", _column("Tracks.scores", self.scores, np.float32, m))
        object.__setattr__(self, "det_indices", _column("Tracks.det_indices", self.det_indices, np.int64, m))

    @classmethod
    def empty(cls) -> Tracks:
        return cls(
            np.zeros(0, np.int64),
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
        )

    def __len__(self) -> int:
        return int(self.track_ids.shape[0])


@dataclass(frozen=True)
class Order:
    """Where a published tracklet stands in its camera's output, so the matcher can decide in a fixed order.

    ``seq`` numbers the tracklets one camera worker publishes in one run (0, 1, 2, ...); ``watermark`` is a
    lower bound, in POSIX seconds, on the ``end_time`` of every tracklet that camera publishes after this one
    (``-inf`` before its first frame); ``published_at`` is the wall-clock POSIX time of publishing (for
    measuring the delay to SQL). The re-ID worker copies it from the tracklet to its embedding.
    """

    seq: int
    watermark: float
    published_at: float

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int | np.integer) or self.seq < 0:
            raise ValueError(f"Order.seq: expected an int >= 0, got {self.seq!r}")
        if np.isnan(self.watermark) or self.watermark == np.inf or not np.isfinite(self.published_at):
            raise ValueError(
                f"Order: expected a watermark below +inf and a finite published_at, got "
                f"{self.watermark!r}, {self.published_at!r}"
            )


@dataclass(frozen=True)
class Progress:
    """A camera worker's progress marker, published beside its tracklets (docs/matcher.md, "Order").

    After the tracklets numbered up to ``last_seq`` (-1: none yet), every tracklet this camera publishes ends
    at or after ``watermark``. ``idle``: the source is not delivering frames (a live stream that is down), so
    the matcher need not wait for it; ``final``: the camera has ended and publishes nothing more. ``n`` counts
    this camera's markers (0, 1, ...), so a later marker is known to be later. ``started_at`` is the wall-clock
    start of the camera worker run that sent it: a camera run again under the same key (a resumed replay)
    sends later ones.
    """

    camera_id: str
    last_seq: int
    watermark: float
    n: int
    idle: bool = False
    final: bool = False
    published_at: float = 0.0
    started_at: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.camera_id, str) or not self.camera_id:
            raise ValueError(f"Progress.camera_id: expected a non-empty str, got {self.camera_id!r}")
        for name, low in (("last_seq", -1), ("n", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
                raise ValueError(f"Progress.{name}: expected an int >= {low}, got {v!r}")
        if np.isnan(self.watermark) or self.watermark == np.inf:
            raise ValueError(f"Progress.watermark: expected a number below +inf, got {self.watermark!r}")


def _track(name: str, frames, boxes, first_frame: int, last_frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated per-frame columns: ``frames`` (F,) int64 strictly increasing within the span, ``boxes``
    (F, 4) float32 finite."""
    f = _column(f"{name}.track_frames", frames, np.int64, None)
    b = _column(f"{name}.track_boxes", boxes, np.float32, f.shape[0], (4,))
    if f.shape[0] and (
        f[0] < first_frame or f[-1] > last_frame or (np.diff(f) <= 0).any() or not np.isfinite(b).all()
    ):
        raise ValueError(
            f"{name}.track_frames / track_boxes: expected strictly increasing frames within "
            f"{first_frame}..{last_frame} and finite boxes, got frames {int(f[0])}..{int(f[-1])}"
        )
    return f, b


def _no_frames() -> np.ndarray:
    return np.zeros(0, np.int64)


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


@dataclass(frozen=True)
class Tracklet:
    """A closed piece of one track in one camera, ready for re-ID.

    ``crops`` (T, 256, 128, 3) uint8 BGR is a bounded, uniformly spread sample of the track's frames; the
    per-crop columns ``frame_indices``, ``timestamps``, ``boxes`` (T, 4) xyxy and ``scores`` describe each
    kept crop. ``first_frame``/``last_frame`` and ``start_time``/``end_time`` span the whole observed
    track piece, which may be longer than the kept crops; ``num_frames`` counts every frame observed.
    The natural key is ``(camera_id, track_id, chunk)``. ``order`` is set by the camera worker when it
    publishes the tracklet. ``track_frames`` (F,) int64 and ``track_boxes`` (F, 4) float32 xyxy are the box
    of every observed frame (strictly increasing frames within the span; empty from a producer that does
    not send them), what the store keeps to draw and export tracks.
    """

    camera_id: str
    track_id: int
    chunk: int
    first_frame: int
    last_frame: int
    start_time: float
    end_time: float
    num_frames: int
    frame_indices: np.ndarray
    timestamps: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    crops: np.ndarray = field(repr=False)
    order: Order | None = None
    track_frames: np.ndarray = field(default_factory=_no_frames, repr=False)
    track_boxes: np.ndarray = field(default_factory=_no_boxes, repr=False)

    def __post_init__(self) -> None:
        idx = _column("Tracklet.frame_indices", self.frame_indices, np.int64, None)
        t = idx.shape[0]
        object.__setattr__(self, "frame_indices", idx)
        object.__setattr__(self, "timestamps", _column("Tracklet.timestamps", self.timestamps, np.float64, t))
        object.__setattr__(self, "boxes", _column("Tracklet.boxes", self.boxes, np.float32, t, (4,)))
        object.__setattr__(self, "scores", _column("Tracklet.scores", self.scores, np.float32, t))
        crops = np.asarray(self.crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[0] != t or crops.shape[3] != 3:
            raise ValueError(
                f"Tracklet.crops: expected ({t}, H, W, 3) uint8, got {crops.shape} {crops.dtype}"
            )
        if self.last_frame < self.first_frame or self.end_time < self.start_time:
            raise ValueError(
                f"Tracklet {self.key}: span reversed (frames {self.first_frame}..{self.last_frame}, "
                f"times {self.start_time}..{self.end_time})"
            )
        f, b = _track("Tracklet", self.track_frames, self.track_boxes, self.first_frame, self.last_frame)
        object.__setattr__(self, "track_frames", f)
        object.__setattr__(self, "track_boxes", b)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.camera_id, int(self.track_id), int(self.chunk))

    def __len__(self) -> int:
        return int(self.frame_indices.shape[0])


@dataclass(frozen=True)
class TrackletEmbedding:
    """The re-ID worker's output for one :class:`Tracklet`.

    ``embedding`` (E,) float32 has unit L2 norm. ``part_visibility`` (K,) float32 in [0, 1] summarises the
    attention: for each of the K parts, the share of the N sampled frames whose temporal weight for that
    part was at least half the uniform weight (1 = usable in every frame). ``model`` names the
    checkpoint that made the embedding, so embeddings of different models are never compared.
    The natural key is ``(camera_id, track_id, chunk)``, as for the tracklet; ``order`` is the tracklet's.
    ``track_frames``/``track_boxes`` are the tracklet's per-frame boxes, copied; ``pictures`` its best crops
    and attention picture (distinct ``(kind, rank)``), which the matcher stores in the transaction that
    stores the embedding. Both are empty from a producer that does not send them.
    """

    camera_id: str
    track_id: int
    chunk: int
    first_frame: int
    last_frame: int
    start_time: float
    end_time: float
    num_frames: int
    embedding: np.ndarray
    part_visibility: np.ndarray
    model: str
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32), repr=False)
    order: Order | None = None
    track_frames: np.ndarray = field(default_factory=_no_frames, repr=False)
    track_boxes: np.ndarray = field(default_factory=_no_boxes, repr=False)
    pictures: tuple[TrackletPicture, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        emb = _column("TrackletEmbedding.embedding", self.embedding, np.float32, None)
        if emb.shape[0] == 0 or not np.isfinite(emb).all():
            raise ValueError(
                f"TrackletEmbedding.embedding: expected a finite non-empty vector, got {emb.shape}"
            )
        norm = float(np.linalg.norm(emb))
        if abs(norm - 1.0) > 1e-3:
            raise ValueError(f"TrackletEmbedding.embedding: expected unit L2 norm, got {norm:.4f}")
        object.__setattr__(self, "embedding", emb)
        vis = _column("TrackletEmbedding.part_visibility", self.part_visibility, np.float32, None)
        object.__setattr__(self, "part_visibility", vis)
        object.__setattr__(
            self, "boxes", _column("TrackletEmbedding.boxes", self.boxes, np.float32, None, (4,))
        )
        if self.end_time < self.start_time:
            raise ValueError(f"TrackletEmbedding {self.key}: end_time before start_time")
        f, b = _track(
            "TrackletEmbedding", self.track_frames, self.track_boxes, self.first_frame, self.last_frame
        )
        object.__setattr__(self, "track_frames", f)
        object.__setattr__(self, "track_boxes", b)
        pictures = tuple(self.pictures)
        if not all(isinstance(p, TrackletPicture) for p in pictures):
            raise ValueError("TrackletEmbedding.pictures: expected TrackletPicture items")
        keys = [(p.kind, p.rank) for p in pictures]
        if len(set(keys)) != len(keys):
            raise ValueError(f"TrackletEmbedding.pictures: (kind, rank) repeated in {sorted(keys)}")
        object.__setattr__(self, "pictures", pictures)

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.camera_id, int(self.track_id), int(self.chunk))
