"""Versioned msgpack wire format for the messages that cross the queues (never pickle).

Every message is one msgpack map ``{"v": 1, "type": "tracklet" | "embedding" | "progress", "session": str, ...}``:

- scalars are msgpack ints, floats and strings under the dataclass field's name;
- a numeric column is ``{"shape": [d0, d1, ...], "data": <raw little-endian bytes>}`` whose dtype is fixed by
  the field (see ``_TRACKLET_ARRAYS`` / ``_EMBEDDING_ARRAYS``), so the reader checks the byte count;
- ``Tracklet.crops`` is ``{"shape": [T, H, W, 3], "jpeg": [<JPEG bytes>, ...]}``, one baseline JPEG per crop
  (lossy: decoded pixels are close to, not equal to, the originals);
- ``session`` is the producing camera worker's run key, carried beside the message (decoders return both in
  an :class:`Envelope`);
- ``order`` (optional on tracklets and embeddings) is ``{"seq": int, "watermark": float, "published_at":
  float}`` (:class:`pipeline.transport.messages.Order`; a watermark of ``-inf`` is allowed);
- ``track_frames`` (``<i8``) and ``track_boxes`` (``<f4``, (F, 4)), optional on tracklets and embeddings and
  written only when non-empty, are the per-frame boxes; absent, they decode as empty;
- ``pictures`` (optional on embeddings, written only when there are some) is a list of ``{"kind": str,
  "rank": int, "frame_index": int, "width": int, "height": int, "jpeg": <JPEG bytes>}``
  (:class:`pipeline.transport.messages.TrackletPicture`), kept byte for byte (checked, not decoded);
- a ``progress`` message is a camera's :class:`pipeline.transport.messages.Progress` marker (``camera_id``,
  ``last_seq``, ``watermark``, ``n``, ``idle``, ``final``, ``published_at``, ``started_at``), sent on the embedding stream.

Readers ignore keys they do not know, so v1 can gain optional fields; anything that changes the meaning of
an existing key bumps ``v``. Decoders raise :class:`WireError` with a short reason (it is written to the
dead-letter stream) for anything malformed: bytes that are not msgpack, truncated or trailing data, an
unknown version, the wrong message type, missing or mistyped fields, byte counts that do not match shapes,
undecodable or mis-sized JPEGs, non-finite embeddings, and whatever the message dataclasses themselves reject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import cv2
import msgpack
import numpy as np

from pipeline.transport.messages import Order, Progress, Tracklet, TrackletEmbedding, TrackletPicture

__all__ = [
    "WIRE_VERSION",
    "Envelope",
    "WireError",
    "encode_tracklet",
    "decode_tracklet",
    "encode_embedding",
    "decode_embedding",
    "encode_progress",
    "decode_matcher_input",
]

WIRE_VERSION = 1

# Field name -> (little-endian dtype, trailing shape). The leading dimension is the column length.
_TRACKLET_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "frame_indices": ("<i8", ()),
    "timestamps": ("<f8", ()),
    "boxes": ("<f4", (4,)),
    "scores": ("<f4", ()),
}
_EMBEDDING_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "embedding": ("<f4", ()),
    "part_visibility": ("<f4", ()),
    "boxes": ("<f4", (4,)),
}
# Optional per-frame columns of tracklets and embeddings, written only when non-empty.
_TRACK_ARRAYS: dict[str, tuple[str, tuple[int, ...]]] = {
    "track_frames": ("<i8", ()),
    "track_boxes": ("<f4", (4,)),
}
_PICTURE_INTS = ("rank", "frame_index", "width", "height")
_MAX_PICTURES = 64
_SPAN_INTS = ("track_id", "chunk", "first_frame", "last_frame", "num_frames")
_SPAN_FLOATS = ("start_time", "end_time")

# A crop bigger than this is not a person crop; refusing it before decoding bounds the memory a bad JPEG costs.
_MAX_CROP_SIDE = 4096


class WireError(ValueError):
    """A message could not be decoded; ``str(err)`` is a short reason fit for the dead-letter stream."""


M = TypeVar("M", covariant=True)


@dataclass(frozen=True)
class Envelope(Generic[M]):
    """A decoded message and the ``session`` (the producing camera worker's run key) carried beside it."""

    message: M
    session: str


# ----------------------------------------------------------------------------------------------- encoding


def _session(session: str) -> str:
    if not isinstance(session, str) or not session:
        raise ValueError(f"session: expected a non-empty str, got {session!r}")
    return session


def _pack_array(arr: np.ndarray, dtype: str) -> dict[str, Any]:
    a = np.ascontiguousarray(arr, dtype=dtype)
    return {"shape": [int(d) for d in a.shape], "data": a.tobytes()}


def _span(m: Tracklet | TrackletEmbedding) -> dict[str, Any]:
    if not isinstance(m.camera_id, str):
        raise ValueError(f"camera_id: expected str, got {type(m.camera_id).__name__}")
    out: dict[str, Any] = {"camera_id": m.camera_id}
    out.update({k: int(getattr(m, k)) for k in _SPAN_INTS})
    out.update({k: float(getattr(m, k)) for k in _SPAN_FLOATS})
    return out


def encode_tracklet(t: Tracklet, *, session: str, jpeg_quality: int = 90) -> bytes:
    """Serialize ``t`` with its crops as JPEG of ``jpeg_quality`` (1..100); raise ``ValueError`` on bad arguments."""
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality: expected an int in 1..100, got {jpeg_quality!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
    frames = []
    for i, crop in enumerate(t.crops):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(crop), params)
        if not ok:
            raise ValueError(f"Tracklet.crops[{i}]: JPEG encoding failed for shape {crop.shape}")
        frames.append(buf.tobytes())
    msg: dict[str, Any] = {"v": WIRE_VERSION, "type": "tracklet", "session": _session(session), **_span(t)}
    for name, (dtype, _) in _TRACKLET_ARRAYS.items():
        msg[name] = _pack_array(getattr(t, name), dtype)
    msg["crops"] = {"shape": [int(d) for d in t.crops.shape], "jpeg": frames}
    _put_order(msg, t.order)
    _put_track(msg, t)
    return msgpack.packb(msg, use_bin_type=True)


def encode_embedding(e: TrackletEmbedding, *, session: str) -> bytes:
    """Serialize ``e`` exactly (float32 columns as raw little-endian bytes)."""
    if not isinstance(e.model, str):
        raise ValueError(f"model: expected str, got {type(e.model).__name__}")
    msg: dict[str, Any] = {"v": WIRE_VERSION, "type": "embedding", "session": _session(session), **_span(e)}
    msg["model"] = e.model
    for name, (dtype, _) in _EMBEDDING_ARRAYS.items():
        msg[name] = _pack_array(getattr(e, name), dtype)
    _put_order(msg, e.order)
    _put_track(msg, e)
    if e.pictures:
        msg["pictures"] = [
            {
                "kind": p.kind,
                "rank": int(p.rank),
                "frame_index": int(p.frame_index),
                "width": int(p.width),
                "height": int(p.height),
                "jpeg": bytes(p.jpeg),
            }
            for p in e.pictures
        ]
    return msgpack.packb(msg, use_bin_type=True)


def encode_progress(p: Progress, *, session: str) -> bytes:
    """Serialize a camera's progress marker."""
    msg: dict[str, Any] = {"v": WIRE_VERSION, "type": "progress", "session": _session(session)}
    msg.update(
        camera_id=p.camera_id,
        last_seq=int(p.last_seq),
        watermark=float(p.watermark),
        n=int(p.n),
        idle=bool(p.idle),
        final=bool(p.final),
        published_at=float(p.published_at),
        started_at=float(p.started_at),
    )
    return msgpack.packb(msg, use_bin_type=True)


def _put_order(msg: dict[str, Any], order: Order | None) -> None:
    if order is not None:
        msg["order"] = {
            "seq": int(order.seq),
            "watermark": float(order.watermark),
            "published_at": float(order.published_at),
        }


def _put_track(msg: dict[str, Any], m: Tracklet | TrackletEmbedding) -> None:
    if len(m.track_frames):
        for name, (dtype, _) in _TRACK_ARRAYS.items():
            msg[name] = _pack_array(getattr(m, name), dtype)


# ----------------------------------------------------------------------------------------------- decoding


def _unpack(data: object, expected_type: str | tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise WireError("empty message")
    try:
        msg = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise WireError(f"not a msgpack message ({type(err).__name__}: {str(err)[:80]})") from None
    if not isinstance(msg, dict):
        raise WireError(f"expected a msgpack map, got {type(msg).__name__}")
    v = msg.get("v")
    if type(v) is not int:
        raise WireError(f"v: expected an int version, got {v!r:.40}")
    if v != WIRE_VERSION:
        raise WireError(f"unsupported wire version {v} (this reader knows {WIRE_VERSION})")
    kind = msg.get("type")
    kinds = expected_type if isinstance(expected_type, tuple) else (expected_type,)
    if kind not in kinds:
        raise WireError(f"type: expected {' or '.join(map(repr, kinds))}, got {kind!r:.40}")
    return msg


def _get(msg: dict[str, Any], name: str, kinds: type | tuple[type, ...], what: str) -> Any:
    if name not in msg:
        raise WireError(f"{name}: missing")
    value = msg[name]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise WireError(f"{name}: expected {what}, got {type(value).__name__}")
    return value


def _str(msg: dict[str, Any], name: str, *, nonempty: bool = False) -> str:
    s = _get(msg, name, str, "str")
    if nonempty and not s:
        raise WireError(f"{name}: expected a non-empty str")
    return s


def _float(msg: dict[str, Any], name: str, *, minus_inf: bool = False) -> float:
    x = float(_get(msg, name, (int, float), "a number"))
    if not (math.isfinite(x) or (minus_inf and x == -math.inf)):
        raise WireError(f"{name}: not finite ({x})")
    return x


def _bool(msg: dict[str, Any], name: str) -> bool:
    value = msg.get(name, False)
    if not isinstance(value, bool):
        raise WireError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def _order(msg: dict[str, Any]) -> Order | None:
    if "order" not in msg:
        return None
    o = _get(msg, "order", dict, "a map with seq, watermark and published_at")
    seq = _get(o, "seq", int, "int")
    wm = _float(o, "watermark", minus_inf=True)
    published = _float(o, "published_at")
    try:
        return Order(seq, wm, published)
    except ValueError as err:
        raise WireError(f"order: {str(err)[:160]}") from None


def _shape(name: str, value: object, ndim: int) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) != ndim
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in value)
    ):
        raise WireError(f"{name}.shape: expected {ndim} non-negative ints, got {value!r:.60}")
    return tuple(value)


def _array(msg: dict[str, Any], name: str, dtype: str, tail: tuple[int, ...]) -> np.ndarray:
    packed = _get(msg, name, dict, "a map with shape and data")
    shape = _shape(name, packed.get("shape"), 1 + len(tail))
    if shape[1:] != tail:
        raise WireError(f"{name}.shape: expected (N, {', '.join(map(str, tail))}), got {shape}")
    data = packed.get("data")
    if not isinstance(data, bytes):
        raise WireError(f"{name}.data: expected bytes, got {type(data).__name__}")
    itemsize = np.dtype(dtype).itemsize
    if len(data) != math.prod(shape) * itemsize:
        raise WireError(f"{name}.data: {len(data)} bytes do not hold shape {shape} of {dtype}")
    # astype copies into a writable native-order array the message can own.
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))


def _jpeg_size(buf: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's SOF header, or None when the markers before it are not well formed."""
    i = 2  # past SOI
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers carry no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            return None
        length = int.from_bytes(buf[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(buf) or length < 7:
                return None
            return int.from_bytes(buf[i + 5 : i + 7], "big"), int.from_bytes(buf[i + 7 : i + 9], "big")
        if length < 2:
            return None
        i += 2 + length
    return None


def _crops(msg: dict[str, Any], t: int) -> np.ndarray:
    packed = _get(msg, "crops", dict, "a map with shape and jpeg")
    shape = _shape("crops", packed.get("shape"), 4)
    n, h, w, c = shape
    if n != t or c != 3:
        raise WireError(f"crops.shape: expected ({t}, H, W, 3), got {shape}")
    if max(h, w) > _MAX_CROP_SIDE:
        raise WireError(f"crops.shape: {h}x{w} exceeds {_MAX_CROP_SIDE} pixels a side")
    frames = packed.get("jpeg")
    if not isinstance(frames, list) or len(frames) != n:
        got = len(frames) if isinstance(frames, list) else type(frames).__name__
        raise WireError(f"crops.jpeg: expected a list of {n} JPEGs, got {got}")
    out = np.empty(shape, np.uint8)
    for i, buf in enumerate(frames):
        if not isinstance(buf, bytes):
            raise WireError(f"crops.jpeg[{i}]: expected bytes, got {type(buf).__name__}")
        # A truncated JPEG still decodes (grey bottom rows), so require both the SOI and EOI markers.
        if buf[:3] != b"\xff\xd8\xff" or buf[-2:] != b"\xff\xd9":
            raise WireError(f"crops.jpeg[{i}]: not a complete JPEG")
        size = _jpeg_size(buf)
        if size != (h, w):
            raise WireError(f"crops.jpeg[{i}]: JPEG header says {size}, expected ({h}, {w})")
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
        if img is None or img.shape != (h, w, 3):
            got = None if img is None else img.shape
            raise WireError(f"crops.jpeg[{i}]: undecodable JPEG (got {got}, expected ({h}, {w}, 3))")
        out[i] = img
    return out


def _track_fields(msg: dict[str, Any]) -> dict[str, np.ndarray]:
    """The optional per-frame columns; both or neither."""
    present = [name for name in _TRACK_ARRAYS if name in msg]
    if not present:
        return {}
    if len(present) != len(_TRACK_ARRAYS):
        raise WireError(f"{present[0]}: sent without {set(_TRACK_ARRAYS) - set(present)}")
    return {name: _array(msg, name, dtype, tail) for name, (dtype, tail) in _TRACK_ARRAYS.items()}


def _pictures(msg: dict[str, Any]) -> tuple[TrackletPicture, ...]:
    if "pictures" not in msg:
        return ()
    items = _get(msg, "pictures", list, "a list of pictures")
    if len(items) > _MAX_PICTURES:
        raise WireError(f"pictures: {len(items)} pictures, at most {_MAX_PICTURES}")
    out = []
    for i, item in enumerate(items):
        name = f"pictures[{i}]"
        if not isinstance(item, dict):
            raise WireError(f"{name}: expected a map, got {type(item).__name__}")
        kind = _str(item, "kind")
        ints = {k: _get(item, k, int, "int") for k in _PICTURE_INTS}
        buf = _get(item, "jpeg", bytes, "bytes")
        if max(ints["width"], ints["height"]) > _MAX_CROP_SIDE:
            raise WireError(
                f"{name}: {ints['height']}x{ints['width']} exceeds {_MAX_CROP_SIDE} pixels a side"
            )
        if buf[:3] != b"\xff\xd8\xff" or buf[-2:] != b"\xff\xd9":
            raise WireError(f"{name}.jpeg: not a complete JPEG")
        size = _jpeg_size(buf)
        if size != (ints["height"], ints["width"]):
            raise WireError(
                f"{name}.jpeg: JPEG header says {size}, expected ({ints['height']}, {ints['width']})"
            )
        try:
            out.append(TrackletPicture(kind=kind, jpeg=buf, **ints))
        except ValueError as err:
            raise WireError(f"{name}: {str(err)[:160]}") from None
    return tuple(out)


def _span_fields(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"camera_id": _str(msg, "camera_id")}
    out.update({k: _get(msg, k, int, "int") for k in _SPAN_INTS})
    out.update({k: _float(msg, k) for k in _SPAN_FLOATS})
    return out


def decode_tracklet(data: bytes) -> Envelope[Tracklet]:
    """Inverse of :func:`encode_tracklet`: the tracklet and its session; raise :class:`WireError` if malformed."""
    msg = _unpack(data, "tracklet")
    session = _str(msg, "session", nonempty=True)
    fields = _span_fields(msg)
    arrays = {k: _array(msg, k, dtype, tail) for k, (dtype, tail) in _TRACKLET_ARRAYS.items()}
    crops = _crops(msg, arrays["frame_indices"].shape[0])
    order = _order(msg)
    track = _track_fields(msg)
    try:
        tracklet = Tracklet(**fields, **arrays, crops=crops, order=order, **track)
    except ValueError as err:
        raise WireError(f"invalid tracklet: {str(err)[:160]}") from None
    return Envelope(tracklet, session)


def decode_embedding(data: bytes) -> Envelope[TrackletEmbedding]:
    """Inverse of :func:`encode_embedding`: the embedding and its session; raise :class:`WireError` if malformed."""
    return _embedding(_unpack(data, "embedding"))


def decode_matcher_input(data: bytes) -> Envelope[TrackletEmbedding | Progress]:
    """What the matcher reads from the embedding stream: an embedding or a camera's progress marker, with its
    session; raise :class:`WireError` if malformed."""
    msg = _unpack(data, ("embedding", "progress"))
    if msg["type"] == "embedding":
        return _embedding(msg)
    session = _str(msg, "session", nonempty=True)
    try:
        p = Progress(
            camera_id=_str(msg, "camera_id", nonempty=True),
            last_seq=_get(msg, "last_seq", int, "int"),
            watermark=_float(msg, "watermark", minus_inf=True),
            n=_get(msg, "n", int, "int"),
            idle=_bool(msg, "idle"),
            final=_bool(msg, "final"),
            published_at=_float(msg, "published_at"),
            started_at=_float(msg, "started_at") if "started_at" in msg else 0.0,
        )
    except ValueError as err:
        if isinstance(err, WireError):
            raise
        raise WireError(f"invalid progress marker: {str(err)[:160]}") from None
    return Envelope(p, session)


def _embedding(msg: dict[str, Any]) -> Envelope[TrackletEmbedding]:
    session = _str(msg, "session", nonempty=True)
    fields = _span_fields(msg)
    model = _str(msg, "model", nonempty=True)
    arrays = {k: _array(msg, k, dtype, tail) for k, (dtype, tail) in _EMBEDDING_ARRAYS.items()}
    for name in ("embedding", "part_visibility"):
        if not np.isfinite(arrays[name]).all():
            raise WireError(f"{name}: contains NaN or infinite values")
    order = _order(msg)
    track = _track_fields(msg)
    pictures = _pictures(msg)
    try:
        embedding = TrackletEmbedding(
            **fields, **arrays, model=model, order=order, **track, pictures=pictures
        )
    except ValueError as err:
        raise WireError(f"invalid embedding: {str(err)[:160]}") from None
    return Envelope(embedding, session)
