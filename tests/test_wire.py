"""Wire format: round trips of tracklets and embeddings, and a table of malformed inputs."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cv2
import msgpack
import numpy as np
import pytest

from pipeline.transport.messages import Order, Progress, Tracklet, TrackletEmbedding, TrackletPicture
from pipeline.transport.wire import (
    WIRE_VERSION,
    Envelope,
    WireError,
    decode_embedding,
    decode_matcher_input,
    decode_tracklet,
    encode_embedding,
    encode_progress,
    encode_tracklet,
)


def make_tracklet(t: int, *, h: int = 256, w: int = 128, seed: int = 0) -> Tracklet:
    rng = np.random.default_rng(seed)
    # Smooth images with a little noise: what a person crop looks like to JPEG, not white noise.
    yy, xx = np.mgrid[0:h, 0:w]
    crops = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        base = np.stack([(yy + 10 * i) % 256, (xx * 2) % 256, (yy + xx) // 2 % 256], axis=-1)
        crops[i] = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
    return Tracklet(
        camera_id="cam-ü1",
        track_id=2**40 + 7,
        chunk=3,
        first_frame=100,
        last_frame=100 + max(t, 1) * 5,
        start_time=1_700_000_000.123456,
        end_time=1_700_000_000.123456 + 2.5,
        num_frames=max(t, 1) * 5,
        frame_indices=np.arange(100, 100 + 5 * t, 5),
        timestamps=1_700_000_000.123456 + np.arange(t) * 0.2,
        boxes=rng.uniform(0, 1000, (t, 4)),
        scores=rng.uniform(0, 1, t),
        crops=crops,
    )


def make_embedding(dim: int = 128, parts: int = 6, boxes: int = 0) -> TrackletEmbedding:
    rng = np.random.default_rng(dim + parts + boxes)
    v = rng.normal(size=dim).astype(np.float32)
    return TrackletEmbedding(
        camera_id="cam2",
        track_id=17,
        chunk=0,
        first_frame=5,
        last_frame=9,
        start_time=10.0,
        end_time=10.5,
        num_frames=5,
        embedding=v / np.linalg.norm(v),
        part_visibility=rng.uniform(0, 1, parts),
        model="drsta-osnet@abc123",
        boxes=rng.uniform(0, 100, (boxes, 4)),
    )


SPAN = ("camera_id", "track_id", "chunk", "first_frame", "last_frame", "start_time", "end_time", "num_frames")


@pytest.mark.parametrize(
    ("t", "quality", "max_mean_err"),
    [
        (0, 90, 0.0),  # the empty case: a tracklet with no kept crops
        (1, 90, 3.0),
        (4, 90, 3.0),
        (3, 100, 1.5),
        (2, 40, 8.0),
    ],
)
def test_tracklet_round_trip(t: int, quality: int, max_mean_err: float) -> None:
    original = make_tracklet(t)
    data = encode_tracklet(original, session="run-42", jpeg_quality=quality)
    envelope = decode_tracklet(data)
    decoded = envelope.message

    assert isinstance(envelope, Envelope) and envelope.session == "run-42"
    for name in SPAN:
        assert getattr(decoded, name) == getattr(original, name), name
    for name in ("frame_indices", "timestamps", "boxes", "scores"):
        got, want = getattr(decoded, name), getattr(original, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert decoded.crops.shape == original.crops.shape and decoded.crops.dtype == np.uint8
    if t:
        err = np.abs(decoded.crops.astype(np.int16) - original.crops.astype(np.int16))
        assert err.mean() <= max_mean_err
    assert decoded.crops.flags.writeable and decoded.boxes.flags.writeable


def test_tracklet_crops_of_another_size_round_trip() -> None:
    original = make_tracklet(2, h=64, w=32)
    decoded = decode_tracklet(encode_tracklet(original, session="s")).message
    assert decoded.crops.shape == (2, 64, 32, 3)


def test_lower_jpeg_quality_makes_smaller_messages() -> None:
    t = make_tracklet(3)
    assert len(encode_tracklet(t, session="s", jpeg_quality=30)) < len(encode_tracklet(t, session="s"))


@pytest.mark.parametrize(("dim", "parts", "boxes"), [(1, 0, 0), (128, 6, 0), (2048, 6, 12)])
def test_embedding_round_trip_is_exact(dim: int, parts: int, boxes: int) -> None:
    original = make_embedding(dim, parts, boxes)
    envelope = decode_embedding(encode_embedding(original, session="run-7"))
    decoded = envelope.message
    assert envelope.session == "run-7"
    for name in (*SPAN, "model"):
        assert getattr(decoded, name) == getattr(original, name), name
    for name in ("embedding", "part_visibility", "boxes"):
        got, want = getattr(decoded, name), getattr(original, name)
        assert got.dtype == np.float32 and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name  # bit-exact


@pytest.mark.parametrize(
    ("encode", "message_type"),
    [
        (lambda: encode_tracklet(make_tracklet(1), session="s"), "tracklet"),
        (lambda: encode_embedding(make_embedding(), session="s"), "embedding"),
    ],
)
def test_every_message_carries_version_and_type(encode: Callable[[], bytes], message_type: str) -> None:
    raw = msgpack.unpackb(encode(), raw=False)
    assert raw["v"] == WIRE_VERSION == 1 and raw["type"] == message_type and raw["session"] == "s"


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_tracklet(make_tracklet(1), session=""),
        lambda: encode_tracklet(make_tracklet(1), session=None),  # type: ignore[arg-type]
        lambda: encode_tracklet(make_tracklet(1), session="s", jpeg_quality=0),
        lambda: encode_tracklet(make_tracklet(1), session="s", jpeg_quality=101),
        lambda: encode_tracklet(make_tracklet(1), session="s", jpeg_quality=90.0),  # type: ignore[arg-type]
        lambda: encode_embedding(make_embedding(), session=""),
    ],
)
def test_encode_rejects_bad_arguments(call: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        call()


# ------------------------------------------------------------------------------------- malformed inputs


def _tracklet_msg() -> dict[str, Any]:
    return msgpack.unpackb(encode_tracklet(make_tracklet(2, h=32, w=16), session="s"), raw=False)


def _embedding_msg() -> dict[str, Any]:
    return msgpack.unpackb(encode_embedding(make_embedding(8, 3), session="s"), raw=False)


def _mutate(base: Callable[[], dict[str, Any]], change: Callable[[dict[str, Any]], Any]) -> bytes:
    msg = base()
    change(msg)
    return msgpack.packb(msg, use_bin_type=True)


def _jpeg(h: int, w: int) -> bytes:
    return cv2.imencode(".jpg", np.zeros((h, w, 3), np.uint8))[1].tobytes()


def _good_tracklet() -> bytes:
    return encode_tracklet(make_tracklet(2, h=32, w=16), session="s")


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg[key] = value

    return change


def _set_in(key: str, sub: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg[key][sub] = value

    return change


def _set_frame(i: int, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg["crops"]["jpeg"][i] = value

    return change


def _set_embedding_value(index: int, value: float) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        arr = np.frombuffer(msg["embedding"]["data"], "<f4").copy()
        arr[index] = value
        msg["embedding"]["data"] = arr.tobytes()

    return change


TRACKLET_BAD: list[tuple[str, Callable[[], object], str]] = [
    ("empty bytes", lambda: b"", "empty"),
    ("not bytes", lambda: "hello", "expected bytes"),
    ("truncated", lambda: _good_tracklet()[:-7], "not a msgpack"),
    ("truncated to half", lambda: _good_tracklet()[: len(_good_tracklet()) // 2], "not a msgpack"),
    ("trailing bytes", lambda: _good_tracklet() + b"\x00", "not a msgpack"),
    ("invalid msgpack byte", lambda: b"\xc1", "not a msgpack"),
    ("pickle is refused", lambda: pickle.dumps(make_tracklet(1)), "not a msgpack"),
    ("top level list", lambda: msgpack.packb([1, "tracklet"]), "expected a msgpack map"),
    ("empty map", lambda: msgpack.packb({}), "v:"),
    ("version missing", lambda: _mutate(_tracklet_msg, lambda m: m.pop("v")), "v:"),
    ("version 2", lambda: _mutate(_tracklet_msg, _set("v", 2)), "unsupported wire version 2"),
    ("version as str", lambda: _mutate(_tracklet_msg, _set("v", "1")), "v:"),
    ("version as bool", lambda: _mutate(_tracklet_msg, _set("v", True)), "v:"),
    ("embedding given to tracklet decoder", lambda: encode_embedding(make_embedding(), session="s"), "type:"),
    ("type missing", lambda: _mutate(_tracklet_msg, lambda m: m.pop("type")), "type:"),
    ("session missing", lambda: _mutate(_tracklet_msg, lambda m: m.pop("session")), "session"),
    ("session empty", lambda: _mutate(_tracklet_msg, _set("session", "")), "session"),
    ("session not str", lambda: _mutate(_tracklet_msg, _set("session", 5)), "session"),
    ("camera_id missing", lambda: _mutate(_tracklet_msg, lambda m: m.pop("camera_id")), "camera_id: missing"),
    ("camera_id as bytes", lambda: _mutate(_tracklet_msg, _set("camera_id", b"cam")), "camera_id"),
    ("track_id as str", lambda: _mutate(_tracklet_msg, _set("track_id", "7")), "track_id"),
    ("track_id as bool", lambda: _mutate(_tracklet_msg, _set("track_id", True)), "track_id"),
    ("chunk as float", lambda: _mutate(_tracklet_msg, _set("chunk", 1.0)), "chunk"),
    ("start_time as str", lambda: _mutate(_tracklet_msg, _set("start_time", "now")), "start_time"),
    ("end_time NaN", lambda: _mutate(_tracklet_msg, _set("end_time", float("nan"))), "end_time"),
    ("span reversed", lambda: _mutate(_tracklet_msg, _set("end_time", 0.0)), "invalid tracklet"),
    ("boxes missing", lambda: _mutate(_tracklet_msg, lambda m: m.pop("boxes")), "boxes: missing"),
    ("boxes as list", lambda: _mutate(_tracklet_msg, _set("boxes", [1, 2, 3, 4])), "boxes"),
    (
        "boxes short data",
        lambda: _mutate(_tracklet_msg, _set_in("boxes", "data", b"\x00" * 31)),
        "boxes.data",
    ),
    ("boxes wrong tail", lambda: _mutate(_tracklet_msg, _set_in("boxes", "shape", [4, 2])), "boxes.shape"),
    ("scores negative dim", lambda: _mutate(_tracklet_msg, _set_in("scores", "shape", [-2])), "scores.shape"),
    ("scores data as str", lambda: _mutate(_tracklet_msg, _set_in("scores", "data", "ab")), "scores.data"),
    ("columns disagree", lambda: _mutate(_tracklet_msg, _set_in("scores", "shape", [1])), "scores.data"),
    ("crops missing", lambda: _mutate(_tracklet_msg, lambda m: m.pop("crops")), "crops: missing"),
    ("crops count", lambda: _mutate(_tracklet_msg, _set_in("crops", "shape", [3, 32, 16, 3])), "crops.shape"),
    ("crops grey", lambda: _mutate(_tracklet_msg, _set_in("crops", "shape", [2, 32, 16, 1])), "crops.shape"),
    (
        "crops huge",
        lambda: _mutate(_tracklet_msg, _set_in("crops", "shape", [2, 10**6, 16, 3])),
        "crops.shape",
    ),
    (
        "crops list short",
        lambda: _mutate(_tracklet_msg, _set_in("crops", "jpeg", [_jpeg(32, 16)])),
        "crops.jpeg",
    ),
    ("frame not bytes", lambda: _mutate(_tracklet_msg, _set_frame(1, "jpeg")), "crops.jpeg[1]"),
    (
        "frame is PNG",
        lambda: _mutate(
            _tracklet_msg, _set_frame(0, cv2.imencode(".png", np.zeros((32, 16, 3), np.uint8))[1].tobytes())
        ),
        "crops.jpeg[0]",
    ),  # fmt: skip
    ("frame truncated", lambda: _mutate(_tracklet_msg, _set_frame(1, _jpeg(32, 16)[:-40])), "crops.jpeg[1]"),
    (
        "frame garbage",
        lambda: _mutate(_tracklet_msg, _set_frame(0, b"\xff\xd8\xff" + b"\x00" * 50 + b"\xff\xd9")),
        "crops.jpeg[0]",
    ),  # fmt: skip
    ("frame wrong size", lambda: _mutate(_tracklet_msg, _set_frame(0, _jpeg(64, 16))), "crops.jpeg[0]"),
    ("frame empty", lambda: _mutate(_tracklet_msg, _set_frame(0, b"")), "crops.jpeg[0]"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in TRACKLET_BAD], ids=[n for n, _, _ in TRACKLET_BAD]
)
def test_decode_tracklet_rejects(make: Callable[[], object], reason: str) -> None:
    data = make()
    with pytest.raises(WireError) as info:
        decode_tracklet(data)  # type: ignore[arg-type]
    text = str(info.value)
    assert reason in text
    assert len(text) <= 240  # short: it goes to the dead-letter stream


EMBEDDING_BAD: list[tuple[str, Callable[[], object], str]] = [
    ("empty bytes", lambda: b"", "empty"),
    ("truncated", lambda: encode_embedding(make_embedding(), session="s")[:-3], "not a msgpack"),
    ("tracklet given to embedding decoder", _good_tracklet, "type:"),
    ("version 0", lambda: _mutate(_embedding_msg, _set("v", 0)), "unsupported wire version 0"),
    ("model missing", lambda: _mutate(_embedding_msg, lambda m: m.pop("model")), "model: missing"),
    ("model as int", lambda: _mutate(_embedding_msg, _set("model", 3)), "model"),
    (
        "NaN embedding",
        lambda: _mutate(_embedding_msg, _set_embedding_value(0, float("nan"))),
        "embedding: contains NaN",
    ),  # fmt: skip
    (
        "inf embedding",
        lambda: _mutate(_embedding_msg, _set_embedding_value(2, float("inf"))),
        "embedding: contains NaN",
    ),  # fmt: skip
    ("not unit norm", lambda: _mutate(_embedding_msg, _set_embedding_value(0, 5.0)), "invalid embedding"),
    (
        "empty embedding",
        lambda: _mutate(_embedding_msg, _set("embedding", {"shape": [0], "data": b""})),
        "invalid embedding",
    ),  # fmt: skip
    (
        "embedding 2-D",
        lambda: _mutate(_embedding_msg, _set_in("embedding", "shape", [2, 4])),
        "embedding.shape",
    ),
    (
        "visibility NaN",
        lambda: _mutate(
            _embedding_msg, _set_in("part_visibility", "data", np.full(3, np.nan, "<f4").tobytes())
        ),
        "part_visibility",
    ),  # fmt: skip
    ("boxes missing", lambda: _mutate(_embedding_msg, lambda m: m.pop("boxes")), "boxes: missing"),
    ("num_frames as str", lambda: _mutate(_embedding_msg, _set("num_frames", "5")), "num_frames"),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in EMBEDDING_BAD], ids=[n for n, _, _ in EMBEDDING_BAD]
)
def test_decode_embedding_rejects(make: Callable[[], object], reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_embedding(make())  # type: ignore[arg-type]
    assert reason in str(info.value)
    assert len(str(info.value)) <= 240


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


def test_unknown_keys_are_ignored_within_a_version() -> None:
    data = _mutate(_embedding_msg, _set("added_in_a_later_build", [1, 2, 3]))
    assert decode_embedding(data).message.track_id == 17


@pytest.mark.parametrize(
    "message",
    [
        Progress("cam1", last_seq=-1, watermark=float("-inf"), n=0, published_at=1.7e9),  # nothing sent yet
        Progress("cam1", 41, 1.7e9 + 5, 12, idle=True, final=True, published_at=1.7e9 + 6, started_at=1.7e9),
        make_embedding(),
        replace(make_embedding(), order=Order(seq=3, watermark=float("-inf"), published_at=1.7e9)),
    ],
    ids=["first marker", "final idle marker", "embedding", "ordered embedding"],
)
def test_matcher_input_round_trips_in_an_envelope(message: Progress | TrackletEmbedding) -> None:
    if isinstance(message, Progress):
        data = encode_progress(message, session="run-3")
    else:
        data = encode_embedding(message, session="run-3")
    envelope = decode_matcher_input(data)
    assert envelope.session == "run-3" and type(envelope.message) is type(message)
    if isinstance(message, Progress):
        assert envelope.message == message
    else:
        assert envelope.message.key == message.key and envelope.message.order == message.order
        assert envelope.message.embedding.tobytes() == message.embedding.tobytes()


def test_matcher_input_refuses_a_tracklet() -> None:
    with pytest.raises(WireError, match="type: expected 'embedding' or 'progress', got 'tracklet'"):
        decode_matcher_input(encode_tracklet(make_tracklet(1), session="s"))


# ----------------------------------------------------------------------------------------------------
# Per-frame boxes and pictures (optional fields, for the store)


def make_pictures(crops: int = 3) -> tuple[TrackletPicture, ...]:
    pics = [TrackletPicture("crop", r, 5 + r, 16, 32, _jpeg(32, 16)) for r in range(crops)]
    return (*pics, TrackletPicture("attention", 0, 5, 16, 32, _jpeg(32, 16)))


def with_track(m, n: int = 5):
    frames = np.arange(m.first_frame, m.first_frame + n)
    boxes = np.random.default_rng(n).uniform(0, 500, (n, 4)).astype(np.float32)
    return replace(m, track_frames=frames, track_boxes=boxes)


@pytest.mark.parametrize(("boxes", "pictures"), [(0, 0), (1, 0), (5, 3), (0, 1)])
def test_embedding_with_track_and_pictures_round_trips_exactly(boxes: int, pictures: int) -> None:
    e = replace(with_track(make_embedding(), boxes), pictures=make_pictures(pictures) if pictures else ())
    back = decode_embedding(encode_embedding(e, session="s")).message
    assert back.track_frames.dtype == np.int64 and back.track_frames.tolist() == e.track_frames.tolist()
    assert back.track_boxes.dtype == np.float32 and back.track_boxes.tobytes() == e.track_boxes.tobytes()
    assert back.pictures == e.pictures  # the JPEG bytes too


def test_tracklet_with_track_round_trips_exactly() -> None:
    t = with_track(make_tracklet(2, h=32, w=16), 11)
    back = decode_tracklet(encode_tracklet(t, session="s")).message
    assert back.track_frames.tolist() == t.track_frames.tolist()
    assert back.track_boxes.tobytes() == t.track_boxes.tobytes()


def test_messages_without_the_new_fields_still_decode() -> None:
    """What an older producer sends (no track_frames, track_boxes, pictures) decodes with them empty, and
    a producer that has none sends exactly the bytes it sent before."""
    old = _embedding_msg()
    assert not {"track_frames", "track_boxes", "pictures"} & set(old)
    e = decode_embedding(msgpack.packb(old, use_bin_type=True)).message
    assert e.track_frames.shape == (0,) and e.track_boxes.shape == (0, 4) and e.pictures == ()
    t = decode_tracklet(_good_tracklet()).message
    assert t.track_frames.shape == (0,) and t.track_boxes.shape == (0, 4)


def _embedding_with_extras() -> dict[str, Any]:
    e = replace(with_track(make_embedding(8, 3)), pictures=make_pictures(1))
    return msgpack.unpackb(encode_embedding(e, session="s"), raw=False)


def _set_picture(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(msg: dict[str, Any]) -> None:
        msg["pictures"][0][key] = value

    return change


EXTRAS_BAD: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("boxes without frames", lambda m: m.pop("track_frames"), "track_boxes: sent without"),
    (
        "frames outside the span",
        _set_in("track_frames", "data", np.arange(50, 55, dtype="<i8").tobytes()),
        "within",
    ),
    (
        "frames repeated",
        _set_in("track_frames", "data", np.array([5, 5, 6, 7, 8], "<i8").tobytes()),
        "increasing",
    ),
    ("pictures not a list", _set("pictures", {"a": 1}), "pictures: expected a list"),
    ("too many pictures", lambda m: m.__setitem__("pictures", m["pictures"] * 65), "at most 64"),
    ("picture not a map", _set("pictures", [3]), "pictures[0]: expected a map"),
    ("unknown kind", _set_picture("kind", "thumbnail"), "kind"),
    ("rank negative", _set_picture("rank", -1), "rank"),
    ("rank missing", lambda m: m["pictures"][0].pop("rank"), "rank: missing"),
    ("jpeg truncated", _set_picture("jpeg", _jpeg(32, 16)[:-10]), "not a complete JPEG"),
    ("jpeg not bytes", _set_picture("jpeg", "x"), "jpeg"),
    ("size mismatch", _set_picture("width", 17), "JPEG header says (32, 16)"),
    ("huge", _set_picture("width", 5000), "exceeds"),
    ("repeated rank", lambda m: m["pictures"].append(dict(m["pictures"][0])), "repeated"),
]


@pytest.mark.parametrize(
    ("change", "reason"), [(c, r) for _, c, r in EXTRAS_BAD], ids=[n for n, _, _ in EXTRAS_BAD]
)
def test_decode_embedding_rejects_bad_track_or_pictures(change, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode_embedding(_mutate(_embedding_with_extras, change))
    assert reason in str(info.value)
    assert len(str(info.value)) <= 240


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"kind": "thumb"}, "kind"),
        ({"rank": -1}, "rank"),
        ({"width": 0}, "width"),
        ({"jpeg": b"\xff\xd8\xff"}, "complete JPEG"),
        ({"jpeg": bytearray(_jpeg(32, 16))}, "complete JPEG"),
    ],
)
def test_tracklet_picture_validates(fields: dict[str, Any], error: str) -> None:
    base = {"kind": "crop", "rank": 0, "frame_index": 0, "width": 16, "height": 32, "jpeg": _jpeg(32, 16)}
    with pytest.raises(ValueError, match=error):
        TrackletPicture(**{**base, **fields})
