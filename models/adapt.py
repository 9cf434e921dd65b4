"""Adapt a DRSTA head to your own cameras without labels, from a finished run's own tracklets.

    python -m models.adapt --run OUT_DIR --cams cams.yaml [--cameras left] --out adapted.pt
                           [--checkpoint IN.pt] [--steps 150]
    python -m models.adapt --db sqlite:///run.db [--schema NAME] [--cameras left] --out adapted.pt

What it believes (and nothing more):

- one track ``(session, camera, track id)`` is one pseudo-identity, and all its pieces are the same person:
  its chunks, and the first and second halves of each chunk (a "view" is such a half), are **positives**;
- two tracks of the same camera and session whose frame spans overlap were visible at the same time, so
  they are certainly different people: **negatives**;
- every other pair (other cameras, tracks that never co-occurred) is **unknown** and never enters the loss.

Training starts from the given checkpoint's head (default: ``models.checkpoint.DEFAULT_CHECKPOINT``) on the
frozen backbone's maps, computed once per crop (as ``models.train_head`` caches them). Loss, for every view
that has a positive and at least one negative: the softmax over its positives and negatives only of cosine /
temperature, -log of the mass on the positives (the style of ``train_head.cross_camera_loss``, restricted to
the known pairs), plus ``pair_weight`` x a contrastive term on the same pairs, mean (1 - cosine) of the
positives + mean max(0, cosine - ``margin``) of the negatives (the softmax alone lets a track's chunks drift
apart as long as its negatives drift further; a pull alone contracts everything), plus ``guard_weight`` x
how far, on average, positive pairs fell below and negative pairs rose above their starting cosine (what
is known must not get worse), plus ``anchor_weight`` x
the squared distance of the head's parameters from the starting
head, so it stays near what was validated.

The result is written to a NEW checkpoint (``--out``; the input is never overwritten and the pipeline never
adapts silently). No labelled pairs exist on the adapted cameras, so the threshold is **copied** from the input
checkpoint, not recalibrated, and ``meta["threshold_source"]`` says so; ``meta["adaptation"]`` records the
run, the pair counts and the mean cosine of positive and negative pairs before and after.

Input, exactly one of:

- ``--run DIR --cams cams.yaml``: the run's ``--out DIR`` files (``<camera>.txt`` MOT rows with the tracker's
  boxes, frames 1-based; ``<camera>_tracklets.jsonl`` with each chunk's 0-based ``first_frame``/``last_frame``)
  and the footage the run read (sources from the run's cams.yaml), re-cropped here (up to ``max_crops`` per
  chunk);
- ``--db URL``: the run's SQL store alone (:func:`read_store`): the crop pictures the re-ID worker kept
  (``tracklet_pictures``, at most ``reid.picture_crops``, default 3, per tracklet) and the spans of
  ``tracklets``, co-occurrence within one camera and one ``session_key`` (camera worker run). For when the
  footage is gone; fewer crops per chunk.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

from models.backbones import preprocess_crops
from models.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    load_drsta,
    read_checkpoint,
    save_checkpoint,
)
from models.drsta import DRSTA
from models.runtime import configure_torch
from models.sampling import restricted_random_sample
from pipeline.camera.tracklets import covered_fraction


@dataclass(frozen=True)
class AdaptConfig:
    """Knobs of one adaptation (command-line flags of the same names)."""

    steps: int = 150
    lr: float = 1e-4
    temperature: float = 0.05  # of the cosine logits, as train_head
    pair_weight: float = 1.0  # x the contrastive term on the known pairs (pull positives, push negatives)
    margin: float = 0.3  # negatives are pushed while their cosine is above this
    guard_weight: float = 10.0  # x how far any known pair moved the wrong way from its starting cosine
    anchor_weight: float = 1.0  # x sum of squared parameter changes from the starting head
    max_crops: int = 8  # crops cut per chunk from the footage (evenly spaced over its boxes)
    seed: int = 0


@dataclass(frozen=True)
class RunTracklet:
    """One chunk of one track, with its crops: what the adaptation sees of a run.

    session: anything that separates runs (track ids restart per run); frames are 0-based and inclusive;
    crops: BGR uint8 person crops in time order (at least one).
    """

    session: str
    camera: str
    track_id: int
    chunk: int
    first_frame: int
    last_frame: int
    crops: tuple[np.ndarray, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if self.last_frame < self.first_frame:
            raise ValueError(
                f"tracklet {self.key}: last_frame {self.last_frame} < first_frame {self.first_frame}"
            )
        if not self.crops:
            raise ValueError(f"tracklet {self.key} chunk {self.chunk}: no crops")

    @property
    def key(self) -> tuple[str, str, int]:
        """The pseudo-identity: one track of one camera in one session."""
        return (self.session, self.camera, self.track_id)


@dataclass(frozen=True)
class PairSet:
    """Views (halves of chunks) and the pairs known between them.

    view_track[i]: index into ``tracks`` of view i's pseudo-identity; view_crops[i]: its crop indices into
    the flat crop list; positive / negative: (P, 2) / (M, 2) int arrays of view indices, i < j.
    co_occurring: the track index pairs (a < b) that were visible at the same time.
    """

    tracks: tuple[tuple[str, str, int], ...]
    view_track: np.ndarray
    view_crops: tuple[tuple[int, ...], ...]
    positive: np.ndarray
    negative: np.ndarray
    co_occurring: frozenset[tuple[int, int]]


def co_occurring_tracks(tracklets: list[RunTracklet]) -> set[tuple[tuple, tuple]]:
    """Pairs of track keys (sorted) with two chunks of the same session and camera overlapping in frames."""
    by_cam: dict[tuple[str, str], list[RunTracklet]] = defaultdict(list)
    for t in tracklets:
        by_cam[(t.session, t.camera)].append(t)
    out = set()
    for ts in by_cam.values():
        for i, a in enumerate(ts):
            for b in ts[i + 1 :]:
                if (
                    a.track_id != b.track_id
                    and a.first_frame <= b.last_frame
                    and b.first_frame <= a.last_frame
                ):
                    out.add(tuple(sorted((a.key, b.key))))
    return out


def build_pairs(tracklets: list[RunTracklet]) -> PairSet:
    """Views and known pairs of ``tracklets`` (crop indices count the crops of ``tracklets`` in order).

    Each chunk with two or more crops gives two views (first and second half of its crops), else one.
    Positives: every two views of one track. Negatives: every view of a track against every view of a
    track it co-occurred with. A pair of co-occurring tracks is never a positive (they are two tracks), and
    no other pair is made.
    """
    keys = sorted({t.key for t in tracklets})
    track_of = {k: i for i, k in enumerate(keys)}
    view_track, view_crops = [], []
    start = 0
    for t in tracklets:
        idx = list(range(start, start + len(t.crops)))
        start += len(t.crops)
        halves = [idx[: len(idx) // 2], idx[len(idx) // 2 :]] if len(idx) >= 2 else [idx]
        for h in halves:
            view_track.append(track_of[t.key])
            view_crops.append(tuple(h))
    vt = np.array(view_track, dtype=np.int64)
    co = {(track_of[a], track_of[b]) for a, b in co_occurring_tracks(tracklets)}
    pos, neg = [], []
    for i in range(len(vt)):
        for j in range(i + 1, len(vt)):
            a, b = int(vt[i]), int(vt[j])
            if a == b:
                pos.append((i, j))
            elif (min(a, b), max(a, b)) in co:
                neg.append((i, j))
    as_pairs = lambda p: np.array(p, dtype=np.int64).reshape(-1, 2)  # noqa: E731
    return PairSet(tuple(keys), vt, tuple(view_crops), as_pairs(pos), as_pairs(neg), frozenset(co))


def known_pair_loss(
    emb: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, temperature: float
) -> torch.Tensor:
    """emb (V, E) unit norm; positive (P, 2), negative (M, 2) view index pairs. For each view with a
    positive and a negative: -log(softmax mass on its positives) over its known pairs only. 0 if none."""
    v = emb.shape[0]
    pos = torch.zeros(v, v, dtype=torch.bool, device=emb.device)
    neg = torch.zeros_like(pos)
    if len(positive):
        pos[positive[:, 0], positive[:, 1]] = True
    if len(negative):
        neg[negative[:, 0], negative[:, 1]] = True
    pos, neg = pos | pos.T, neg | neg.T
    has = pos.any(1) & neg.any(1)
    if not has.any():
        return emb.sum() * 0.0
    logits = (emb @ emb.T / temperature)[has]  # (A, V)
    log_all = torch.logsumexp(logits.masked_fill(~(pos | neg)[has], float("-inf")), dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~pos[has], float("-inf")), dim=1)
    return (log_all - log_pos).mean()


def contrastive_loss(
    emb: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float
) -> torch.Tensor:
    """mean (1 - cos) over the positive pairs + mean max(0, cos - margin) over the negative pairs."""
    return (1 - _pair_cos(emb, positive)).mean() + (_pair_cos(emb, negative) - margin).clamp(min=0).mean()


def _pair_cos(emb: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """(P,) cosines of unit-norm ``emb`` rows for (P, 2) index pairs."""
    return (emb[pairs[:, 0]] * emb[pairs[:, 1]]).sum(1)


def _view_grid(maps: torch.Tensor, crops: tuple[int, ...], n: int) -> torch.Tensor:
    """(N, D, h, w) maps of the N frames test-mode sampling picks from a view (deterministic, so the guard
    compares each pair with its own starting cosine)."""
    picks = restricted_random_sample(len(crops), n, train=False)
    return maps[[crops[i] for i in picks]]


def view_embeddings(model: DRSTA, maps: torch.Tensor, pairs: PairSet) -> torch.Tensor:
    """(V, E) test-time embeddings of every view."""
    model.eval()
    n = model.num_frames
    with torch.no_grad():
        grids = torch.cat([_view_grid(maps, c, n) for c in pairs.view_crops])
        return model.forward_features(grids, n).embeddings


def pair_means(emb: torch.Tensor, pairs: PairSet) -> dict[str, float | None]:
    """Mean cosine of the positive and of the negative view pairs (None when there are none)."""
    sim = emb @ emb.T

    def mean(p: np.ndarray) -> float | None:
        return float(sim[p[:, 0], p[:, 1]].mean()) if len(p) else None

    return {"positive": mean(pairs.positive), "negative": mean(pairs.negative)}


def backbone_maps(model: DRSTA, crops: list[np.ndarray], batch: int = 32) -> torch.Tensor:
    """(C, D, h, w) float32 backbone maps of every crop (the backbone is frozen: computed once)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            x = preprocess_crops(crops[i : i + batch], size=model.backbone.input_size)
            out.append(model.backbone.features_and_embedding(x)[0].float())
    return torch.cat(out)


def adapt_head(model: DRSTA, tracklets: list[RunTracklet], cfg: AdaptConfig) -> tuple[DRSTA, dict[str, Any]]:
    """Fine-tune ``model``'s head in place on the known pairs of ``tracklets``; return it and a summary
    (pair counts, loss and pair means before/after). Raises ValueError when no view has both a positive
    and a negative (nothing to learn without inventing pairs)."""
    pairs = build_pairs(tracklets)
    pos, neg = torch.from_numpy(pairs.positive), torch.from_numpy(pairs.negative)
    if not len(pos) or not len(neg):
        raise ValueError(
            f"nothing to adapt on: {len(pos)} positive and {len(neg)} negative pairs among "
            f"{len(pairs.tracks)} tracks (need tracks seen at the same time in one camera)"
        )
    torch.manual_seed(cfg.seed)
    maps = backbone_maps(model, [c for t in tracklets for c in t.crops])
    emb_before = view_embeddings(model, maps, pairs)
    before = pair_means(emb_before, pairs)
    params = model.head_parameters()
    start = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    n = model.num_frames
    losses = []
    grids = torch.cat([_view_grid(maps, c, n) for c in pairs.view_crops])
    start_pos, start_neg = _pair_cos(emb_before, pos), _pair_cos(emb_before, neg)
    for _ in tqdm(range(cfg.steps), desc="adapting the head", unit="step"):
        model.train()
        model.backbone.eval()
        emb = model.forward_features(grids, n).embeddings
        l_pairs = known_pair_loss(emb, pos, neg, cfg.temperature)
        l_guard = (start_pos - _pair_cos(emb, pos)).clamp(min=0).mean() + (
            _pair_cos(emb, neg) - start_neg
        ).clamp(min=0).mean()
        l_anchor = sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start, strict=True))
        l_contrast = contrastive_loss(emb, pos, neg, cfg.margin)
        loss = (
            l_pairs + cfg.pair_weight * l_contrast + cfg.guard_weight * l_guard + cfg.anchor_weight * l_anchor
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(l_pairs.item())
    emb_after = view_embeddings(model, maps, pairs)
    after = pair_means(emb_after, pairs)
    worst_pos = float((start_pos - _pair_cos(emb_after, pos)).max())
    worst_neg = float((_pair_cos(emb_after, neg) - start_neg).max())
    summary = {
        "tracks": len(pairs.tracks),
        "chunks": len(tracklets),
        "views": len(pairs.view_crops),
        "crops": int(maps.shape[0]),
        "positive_pairs": len(pos),
        "negative_pairs": len(neg),
        "co_occurring_tracks": len(pairs.co_occurring),
        "pair_loss_first": losses[0],
        "pair_loss_last": losses[-1],
        "mean_cos_before": before,
        "mean_cos_after": after,
        "largest_positive_drop": worst_pos,  # > 0: some chunk pair of one track ended less close
        "largest_negative_rise": worst_neg,  # > 0: some co-occurring pair ended closer
        "config": asdict(cfg),
    }
    return model.eval(), summary


def _unoccluded(rows: np.ndarray, max_overlap: float) -> np.ndarray:
    """(N,) bool: MOT rows whose box is covered at most ``max_overlap`` by another box of the same frame
    (the pipeline's own crop rule, ``covered_fraction``: such a crop would show two people)."""
    keep = np.ones(len(rows), dtype=bool)
    if max_overlap >= 1.0:
        return keep
    for f in np.unique(rows[:, 0]):
        idx = np.flatnonzero(rows[:, 0] == f)
        xyxy = np.concatenate([rows[idx, 2:4], rows[idx, 2:4] + rows[idx, 4:6]], axis=1)
        for k, i in enumerate(idx):
            keep[i] = covered_fraction(xyxy, k) <= max_overlap
    return keep


def read_run(
    out_dir: str | Path,
    sources: dict[str, str],
    *,
    max_overlap: float,
    cameras: list[str] | None = None,
    max_crops: int = 8,
) -> list[RunTracklet]:
    """The tracklets of a finished run's ``--out DIR``, re-cropped from the footage.

    sources: camera id -> video file or image folder the run read (its frame i is the run's frame index i).
    Per chunk, up to ``max_crops`` of the track's boxes inside [first_frame, last_frame] are cut, evenly
    spaced, leaving out boxes covered more than ``max_overlap`` by another tracked box of the frame (the run's
    ``tracklets.max_overlap``; the MOT rows hold the tracked boxes, not every detection). Chunks without a box in the footage are skipped. Raises FileNotFoundError for a missing file.
    """
    out_dir = Path(out_dir)
    cams = cameras or sorted(p.name[: -len("_tracklets.jsonl")] for p in out_dir.glob("*_tracklets.jsonl"))
    session = str(out_dir.resolve())
    result = []
    for cam in cams:
        jl, mot = out_dir / f"{cam}_tracklets.jsonl", out_dir / f"{cam}.txt"
        for p in (jl, mot):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not in the run's out folder")
        if cam not in sources:
            raise KeyError(f"camera {cam!r}: no footage source given (known: {sorted(sources)})")
        chunks = [json.loads(line) for line in jl.read_text().splitlines() if line.strip()]
        rows = np.loadtxt(mot, delimiter=",", ndmin=2) if mot.stat().st_size else np.zeros((0, 6))
        rows = rows[_unoccluded(rows, max_overlap)]
        wanted: dict[int, list[tuple[int, int, np.ndarray]]] = defaultdict(list)  # frame -> (chunk #, box)
        for ci, c in enumerate(chunks):
            sel = rows[(rows[:, 1] == c["track_id"]) & (rows[:, 0] - 1 >= c["first_frame"])]
            sel = sel[sel[:, 0] - 1 <= c["last_frame"]]
            if not len(sel):
                continue
            for r in sel[
                np.unique(np.linspace(0, len(sel) - 1, min(max_crops, len(sel))).round().astype(int))
            ]:
                wanted[int(r[0]) - 1].append((ci, r[2:6]))
        crops: dict[int, list[np.ndarray]] = defaultdict(list)
        last = max(wanted, default=-1)
        for f, frame in enumerate(_frames(sources[cam], cam)):
            if f > last:
                break
            for ci, (x, y, w, h) in wanted.get(f, []):
                x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
                x1, y1 = min(frame.shape[1], int(round(x + w))), min(frame.shape[0], int(round(y + h)))
                if x1 > x0 and y1 > y0:
                    crops[ci].append(frame[y0:y1, x0:x1].copy())
        for ci, c in enumerate(chunks):
            if crops.get(ci):
                result.append(
                    RunTracklet(
                        session,
                        cam,
                        int(c["track_id"]),
                        int(c["chunk"]),
                        int(c["first_frame"]),
                        int(c["last_frame"]),
                        tuple(crops[ci]),
                    )
                )
    return result


def read_store(url: str, *, cameras: list[str] | None = None, schema: str | None = None) -> list[RunTracklet]:
    """The tracklets of a finished run's SQL store (SQLite or PostgreSQL), with their stored crops.

    One :class:`RunTracklet` per ``tracklets`` row that has ``tracklet_pictures`` of kind ``'crop'`` (the
    re-ID worker keeps the ``reid.picture_crops`` crops its temporal attention weighted most, default 3,
    already cut with the pipeline's crop rule), crops decoded from JPEG and put in frame order; session =
    ``tracklets.session_key`` (one camera worker run), frames = ``first_frame``/``last_frame`` (0-based, as
    ``<camera>_tracklets.jsonl``), so :func:`co_occurring_tracks` compares spans within one camera and one
    run. Tracklets without pictures (``reid.picture_crops: 0``, or forgotten) are skipped. ``cameras``
    keeps those cameras only.

    Raises FileNotFoundError for a SQLite file that does not exist (opening would create it), KeyError for a
    camera the store does not have, ValueError for a store without crop pictures or an undecodable JPEG, and
    ``storage.db.StoreError`` (one line, password redacted) when the store cannot be opened.
    """
    import sqlalchemy as sa  # the store is needed by this input only

    from storage.db import open_store
    from storage.models import TrackletPictureRow, TrackletRow

    parsed = sa.engine.make_url(url) if "://" in url else None
    if parsed is None:
        raise ValueError(f"--db {url!r}: not an SQLAlchemy URL (e.g. sqlite:///run.db)")
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise FileNotFoundError(f"{parsed.database}: database not found")
    t, p = TrackletRow.__table__, TrackletPictureRow.__table__
    store = open_store(url, schema=schema)
    try:
        with store.session(readonly=True) as s:
            known = sorted(s.execute(sa.select(t.c.camera_id).distinct()).scalars())
            for cam in cameras or []:
                if cam not in known:
                    raise KeyError(f"camera {cam!r}: not in the store (it has {known})")
            stmt = (
                sa.select(
                    t.c.id,
                    t.c.camera_id,
                    t.c.session_key,
                    t.c.track_id,
                    t.c.chunk,
                    t.c.first_frame,
                    t.c.last_frame,
                    p.c.frame_index,
                    p.c.jpeg,
                )
                .select_from(t.join(p, p.c.tracklet_id == t.c.id))
                .where(p.c.kind == "crop")
                .order_by(t.c.camera_id, t.c.session_key, t.c.track_id, t.c.chunk, p.c.frame_index, p.c.rank)
            )
            if cameras:
                stmt = stmt.where(t.c.camera_id.in_(cameras))
            rows = s.execute(stmt).all()
    finally:
        store.dispose()
    by_tracklet: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        by_tracklet[int(r.id)].append(r)
    if not by_tracklet:
        raise ValueError(
            f"{store.url}: no tracklet has stored crop pictures (a run with reid.picture_crops 0, or none "
            "finished); use --run with the footage instead"
        )
    result = []
    for tid, rs in by_tracklet.items():
        crops = []
        for r in rs:
            img = cv2.imdecode(np.frombuffer(bytes(r.jpeg), np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"{store.url}: tracklet {tid}: picture of frame {r.frame_index} is no JPEG")
            crops.append(img)
        r = rs[0]
        result.append(
            RunTracklet(
                str(r.session_key),
                str(r.camera_id),
                int(r.track_id),
                int(r.chunk),
                int(r.first_frame),
                int(r.last_frame),
                tuple(crops),
            )
        )
    return result


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _frames(source: str | Path, camera: str):
    """BGR frames of a video file, or of an image folder's images in name order (as the run read them)."""
    path = Path(source)
    if path.is_dir():
        for p in sorted(q for q in path.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
            frame = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if frame is None:
                raise FileNotFoundError(f"{p}: unreadable image of camera {camera!r}")
            yield frame
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"{path}: cannot open the footage of camera {camera!r}")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def sources_of(cams_yaml: str | Path) -> dict[str, str]:
    """camera id -> source, from a run's cams.yaml (``cameras: [{id, source, ...}]``); relative paths are
    resolved against the file's folder, as the pipeline resolves them."""
    cams_yaml = Path(cams_yaml)
    raw = yaml.safe_load(cams_yaml.read_text()) or {}
    out = {}
    for c in raw.get("cameras", []):
        src = str(c["source"])
        if "://" not in src and not src.isdigit() and not Path(src).is_absolute():
            src = str(cams_yaml.parent / src)
        out[str(c["id"])] = src
    return out


def write_adapted(
    model: DRSTA, source_checkpoint: str | Path, out: str | Path, summary: dict[str, Any], run: str
) -> Path:
    """Write the adapted head to ``out`` (never the input file): backbone reference, dtype and threshold
    of the input are kept; the threshold (and the camera-centering record, when there is one) is copied, not
    recalibrated, and the metadata says so."""
    src, out = Path(source_checkpoint), Path(out)
    if out.resolve() == src.resolve():
        raise ValueError(f"--out {out}: is the input checkpoint; adaptation writes a new file")
    payload = read_checkpoint(src)
    old_meta = payload.get("meta", {})
    half = any(v.dtype == torch.float16 for v in payload["head"].values())
    meta = {
        "dataset": f"adapted without labels on run {run} (from {old_meta.get('dataset', '?')})",
        "adapted_from": str(src),
        "threshold": old_meta.get("threshold"),
        "operating_point": old_meta.get("operating_point"),
        "threshold_source": "copied from the input checkpoint, not recalibrated: the adapted cameras have "
        "no labelled validation pairs",
        "adaptation": json.dumps(summary),
    }
    if old_meta.get("centering") is not None:
        # the camera prior and the centred threshold, copied likewise (docs/matcher.md, 3a): each camera's own
        # mean replaces the prior as the camera is seen
        meta["centering"] = old_meta["centering"]
    return save_checkpoint(
        out,
        model,
        include_backbone=False,
        backbone_weights=payload.get("backbone_weights"),
        meta=meta,
        head_dtype=torch.float16 if half else None,
    )


_FLAGS = tuple(AdaptConfig.__dataclass_fields__)


def main(argv: list[str] | None = None) -> int:
    from common.redact import redact_url
    from pipeline.config.schema import TrackletConfig  # the pipeline's default, written once there
    from storage.db import StoreError

    ap = argparse.ArgumentParser(prog="python -m models.adapt", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--run", help="the finished run's --out folder (with --cams; crops re-cut from the footage)"
    )
    ap.add_argument("--cams", help="the run's cams.yaml (footage sources), with --run")
    ap.add_argument(
        "--db",
        help="instead of --run/--cams: the run's SQL store URL (its stored crop pictures), e.g. sqlite:///run.db",
    )
    ap.add_argument("--schema", help="with --db: the PostgreSQL schema of the store (default: none)")
    ap.add_argument("--cameras", nargs="+", help="adapt on these cameras only (default: all in the run)")
    ap.add_argument("--checkpoint", help="head to start from (default: the project's default checkpoint)")
    ap.add_argument("--out", required=True, help="the new checkpoint (.pt); never the input")
    ap.add_argument(
        "--max-overlap",
        type=float,
        default=TrackletConfig.__dataclass_fields__["max_overlap"].default,
        help="skip boxes covered more than this by another (the pipeline's tracklets.max_overlap)",
    )
    for f in _FLAGS:
        default = AdaptConfig.__dataclass_fields__[f].default
        ap.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default)
    args = ap.parse_args(argv)
    problem = None
    if (args.db is None) == (args.run is None):
        problem = "give exactly one input: --db URL, or --run OUT_DIR with --cams cams.yaml"
    elif args.db is not None and args.cams is not None:
        problem = "--cams goes with --run (a --db store holds its own crops)"
    elif args.run is not None and args.cams is None:
        problem = "--run needs --cams (the run's cams.yaml, to find the footage)"
    elif args.schema is not None and args.db is None:
        problem = "--schema goes with --db"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    configure_torch()
    cfg = AdaptConfig(**{f: getattr(args, f) for f in _FLAGS})
    src = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if Path(args.out).resolve() == src.resolve():  # before minutes of work, not after
        print(
            f"error: --out {args.out}: is the input checkpoint; adaptation writes a new file", file=sys.stderr
        )
        return 2
    try:
        if args.db is not None:
            tracklets = read_store(args.db, cameras=args.cameras, schema=args.schema)
            run = redact_url(args.db)
        else:
            tracklets = read_run(
                args.run,
                sources_of(args.cams),
                max_overlap=args.max_overlap,
                cameras=args.cameras,
                max_crops=cfg.max_crops,
            )
            run = str(args.run)
        model = load_drsta(src)
        model, summary = adapt_head(model, tracklets, cfg)
        summary["cameras"] = sorted({t.camera for t in tracklets})
        summary["input"] = "db" if args.db is not None else "run"
        path = write_adapted(model, src, args.out, summary, run)
    except (CheckpointError, FileNotFoundError, ValueError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # str(KeyError) quotes its message
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(path), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
