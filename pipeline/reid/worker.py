"""Re-ID workers: closed tracklets in, 128-d embeddings (with an attention summary) out.

A worker consumes the tracklet stream in a consumer group (several workers can share it), gathers up to
``batch_size`` tracklets or waits at most ``max_wait_ms``, samples N crops per tracklet with the paper's
test-time rule (first frame of each of N equal chunks, ``reid.num_frames``), runs the network once for the
batch (on CUDA when present), publishes one embedding message per tracklet (with the tracklet's per-frame
boxes and its pictures, :mod:`pipeline.reid.pictures`), and only then acknowledges the tracklets. A message
it cannot decode goes to the dead-letter stream with the reason; the worker keeps going.
Every setting is a required keyword argument; the defaults and their rules are the ``reid:`` section's
(:class:`pipeline.config.ReIDConfig`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from models.backbones import preprocess_crops
from models.drsta import DRSTA, Embedder
from models.sampling import restricted_random_sample
from pipeline.reid.pictures import tracklet_pictures
from pipeline.transport.messages import Tracklet, TrackletEmbedding
from pipeline.transport.queues import Message, Queue, decode_or_dead_letter
from pipeline.transport.wire import Envelope, decode_tracklet, encode_embedding


def part_visibility(temporal: np.ndarray) -> np.ndarray:
    """(N, K) temporal attention -> (K,) share of frames in which each part carried at least half of the
    uniform weight 1/N: 1.0 = the part was usable in every sampled frame, low = seen in few of them."""
    n = temporal.shape[0]
    return (temporal >= 0.5 / n).mean(axis=0).astype(np.float32)


class TrackletEncoder:
    """Runs a re-ID network (DRSTA or the average-pooling baseline) on tracklets.

    On CUDA a call is one forward pass. On the CPU each tracklet gets a forward pass of its own: CPU
    convolutions round differently for different batch sizes (about 1e-7), so batching would make a tracklet's
    embedding depend on which others the queue happened to deliver with it, and a replay would not be exactly
    repeatable; one at a time it is bit-identical, and on this CPU no slower (8 OSNet clips: 0.30 s one by one,
    0.35-0.51 s as one batch).

    ``num_frames`` is N, the frames sampled per tracklet (``reid.num_frames``); ``None`` takes the N the
    network was built with (``model.num_frames``). A DRSTA network with feature enhancement only runs on its
    own N: another value raises ``ValueError`` here, before any tracklet is read.

    ``picture_crops`` and ``picture_quality`` (``reid.picture_crops``, ``reid.picture_quality``): each
    embedding carries that many best crops by temporal attention and one attention picture, as JPEG of that
    quality; 0 crops sends no pictures. Pictures are made after the forward pass and never change an embedding.
    """

    def __init__(
        self,
        model: Embedder,
        *,
        model_name: str,
        device: torch.device | str,
        num_frames: int | None,
        picture_crops: int,
        picture_quality: int,
        blur_heads: bool,
    ) -> None:
        own = int(model.num_frames)
        if (
            num_frames is not None
            and num_frames != own
            and isinstance(model, DRSTA)
            and model.enhance is not None
        ):
            raise ValueError(
                f"reid.num_frames: the network {model_name} has feature enhancement built for N={own} frames, "
                f"got {num_frames} (leave reid.num_frames out to use {own})"
            )
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.model_name = model_name
        self.num_frames = own if num_frames is None else int(num_frames)
        self.picture_crops = int(picture_crops)
        self.picture_quality = int(picture_quality)
        self.blur_heads = bool(blur_heads)

    def encode(self, tracklets: Sequence[Tracklet]) -> list[TrackletEmbedding]:
        if not tracklets:
            return []
        n = self.num_frames
        clips, sampled = [], []
        for t in tracklets:
            if len(t) == 0:
                raise ValueError(f"tracklet {t.key}: no crops to embed")
            idx = restricted_random_sample(len(t), n, train=False)
            sampled.append(np.asarray(idx))
            clips.append(preprocess_crops(t.crops[idx]))  # (N, 3, 256, 128)
        x = torch.stack(clips).to(self.device)  # (B, N, 3, H, W)
        step = len(clips) if self.device.type == "cuda" else 1
        outs = [self.model.embed(x[i : i + step]) for i in range(0, len(clips), step)]
        emb = torch.cat([o.embeddings for o in outs]).float().cpu().numpy()
        temporal = torch.cat([o.temporal_attention for o in outs]).float().cpu().numpy()  # (B, N, K)
        spatial = torch.cat([o.spatial_attention for o in outs]).float().cpu().numpy()  # (B, N, K, L)
        grid = outs[0].grid_size
        return [
            TrackletEmbedding(
                camera_id=t.camera_id,
                track_id=t.track_id,
                chunk=t.chunk,
                first_frame=t.first_frame,
                last_frame=t.last_frame,
                start_time=t.start_time,
                end_time=t.end_time,
                num_frames=t.num_frames,
                embedding=emb[i],
                part_visibility=part_visibility(temporal[i]),
                model=self.model_name,
                boxes=t.boxes,
                order=t.order,
                track_frames=t.track_frames,
                track_boxes=t.track_boxes,
                pictures=tracklet_pictures(
                    t.crops,
                    t.frame_indices,
                    sampled[i],
                    temporal[i],
                    spatial[i],
                    grid,
                    num_crops=self.picture_crops,
                    quality=self.picture_quality,
                    blur_heads=self.blur_heads,
                ),
            )
            for i, t in enumerate(tracklets)
        ]


def run_reid_worker(
    queue: Queue,
    encoder: TrackletEncoder,
    *,
    stream_in: str,
    stream_out: str,
    group: str,
    embedding_group: str,
    consumer: str,
    batch_size: int,
    max_wait_ms: int,
    reclaim_idle_ms: int,
    stop: threading.Event | None = None,
    drain: threading.Event | None = None,
) -> int:
    """Serve until ``stop`` is set, or until ``drain`` is set and the input stream has nothing left.

    Reads ``stream_in`` in consumer group ``group`` (``reid.group``) as ``consumer``, and creates the
    matcher's group ``embedding_group`` (``matcher.group``) on ``stream_out`` first, so that embeddings
    published before the matcher starts are kept. ``batch_size``, ``max_wait_ms`` and ``reclaim_idle_ms`` are
    the ``reid:`` section's. Returns the number of tracklets embedded. ``drain`` is how a replay ends: the
    camera workers are done, so once the group has no lag the worker exits. A worker restarted under the same
    ``consumer`` name first finishes what its predecessor left pending; other consumers' pending work is
    reclaimed after ``reclaim_idle_ms``.
    """
    queue.ensure_group(stream_in, group)
    queue.ensure_group(stream_out, embedding_group)
    done = 0
    last_reclaim = 0.0
    recovering = True  # first what this consumer name left unfinished (a restart), before anything new
    while not (stop is not None and stop.is_set()):
        batch: list[Message] = []
        if recovering:
            batch = queue.recover(stream_in, group, consumer, count=batch_size)
            recovering = bool(batch)
            if batch:
                done += _handle(queue, encoder, batch, stream_in, stream_out, group)
                continue
        now = time.monotonic()
        if now - last_reclaim > reclaim_idle_ms / 1000 / 2:
            batch.extend(
                queue.reclaim(stream_in, group, consumer, min_idle_ms=reclaim_idle_ms, count=batch_size)
            )
            last_reclaim = now
        deadline = time.monotonic() + max_wait_ms / 1000
        while len(batch) < batch_size:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 and batch:
                break
            got = queue.consume(
                stream_in, group, consumer, count=batch_size - len(batch), block_ms=max(left_ms, 50)
            )
            batch.extend(got)
            if not got and (batch or time.monotonic() >= deadline):
                break
        if not batch:
            if drain is not None and drain.is_set() and queue.lag(stream_in, group) == 0:
                break
            continue
        done += _handle(queue, encoder, batch, stream_in, stream_out, group)
    return done


def _decode_embeddable(payload: bytes) -> Envelope[Tracklet]:
    """``decode_tracklet``, also refusing a tracklet without crops: the encoder would fail its whole batch."""
    envelope = decode_tracklet(payload)
    if len(envelope.message) == 0:
        raise ValueError(f"tracklet {envelope.message.key} has no crops to embed")
    return envelope


def _handle(
    queue: Queue, encoder: TrackletEncoder, batch: list[Message], stream_in, stream_out, group
) -> int:
    decoded = decode_or_dead_letter(queue, stream_in, group, batch, _decode_embeddable)
    if not decoded:
        return 0
    embeddings = encoder.encode([envelope.message for _, envelope in decoded])
    for (_, envelope), e in zip(decoded, embeddings, strict=True):
        queue.publish(stream_out, encode_embedding(e, session=envelope.session))
    # Only after the results are published. The entries carry JPEG crops: delete them now rather than when
    # MAXLEN trims them (safe: reid.group is the only consumer group of the tracklet stream).
    queue.ack(stream_in, group, [m.id for m, _ in decoded], delete=True)
    return len(decoded)
