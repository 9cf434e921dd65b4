"""Redraw a recorded camera's footage with each person's global identity, from what the store holds.

    python -m pipeline.tools.render --db URL --camera ID --out FILE.mp4 [--source PATH] [--session KEY]
        [--crop X1,Y1,X2,Y2] [--cameras cams.yaml] [--blur-heads] [--max-frames N] [--schema NAME]

(``run_pipeline.py render`` maps to the same parser.) Each box of the camera's stored per-frame boxes
(``tracklet_boxes``, :func:`storage.repository.boxes_of_camera`) is drawn on its frame in its identity's
colour (:func:`pipeline.camera.drawing.identity_color`: the same colour in every camera) with a label
``"id 17"``; boxes of a tracklet without a sighting yet are grey and labelled ``"?"``. The video is written
as MP4 (OpenCV's ``mp4v``) at the footage's frame rate. Exit status 0 on success; 2 with a one-line message
on stderr for an unknown camera or run, a source that is missing, live, or unreadable, or a bad argument.

Where the frames come from: the ``cameras.source`` the camera worker stored (a recorded file or image folder
as the config resolved it; URLs are stored redacted and cannot be replayed), or ``--source PATH``. Frames are
decoded by the pipeline's own frame sources, so rotation and frame numbering are the camera worker's.

The crop: boxes are in pixels of the camera's cropped view, so a camera that ran with ``crop:`` is drawn on
the same rectangle of the footage: the one the run stored (``cameras.crop``, since migration 0004), unless
``--crop x1,y1,x2,y2`` or the config named by ``--cameras cams.yaml`` (its ``cameras[].crop``) says
otherwise (a store written before 0004 holds no crop: give it one of these). The video shows the cropped
view.

Heads are blurred (:mod:`pipeline.privacy`) with ``--blur-heads`` or when the config given with
``--cameras`` says ``privacy.blur_heads: true``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import sqlalchemy as sa
from tqdm import tqdm

from common.redact import redact_text
from pipeline.camera.crop import Crop, check_crop
from pipeline.camera.drawing import draw_header, draw_identities
from pipeline.camera.source_kind import source_kind
from pipeline.camera.sources import SourceError, open_source
from pipeline.privacy import blur_heads as blur_head_bands
from storage import repository as repo
from storage.db import Store, StoreError, open_store
from storage.models import CameraRow

__all__ = [
    "FrameBoxes",
    "RenderReport",
    "frame_boxes",
    "main",
    "parser",
    "render_camera",
    "run",
    "stored_view",
]

FALLBACK_FPS = 10.0  # when the footage does not say its rate


@dataclass(frozen=True)
class FrameBoxes:
    """Every stored box of one camera run, sorted by frame: ``frames`` (N,) int64 frame indices, ``boxes``
    (N, 4) float32 ``[x1, y1, x2, y2]`` pixels of the camera's (cropped) view, ``identity_ids`` (N,) int64
    with -1 for a tracklet without identity."""

    frames: np.ndarray
    boxes: np.ndarray
    identity_ids: np.ndarray

    def at(self, frame_index: int) -> tuple[np.ndarray, list[int | None]]:
        """The boxes (K, 4) and identities (None: unassigned) of frame ``frame_index``."""
        lo, hi = np.searchsorted(self.frames, [frame_index, frame_index + 1])
        ids = [None if i < 0 else int(i) for i in self.identity_ids[lo:hi]]
        return self.boxes[lo:hi], ids


@dataclass(frozen=True)
class RenderReport:
    """What :func:`render_camera` wrote: ``frames`` frames of ``size`` ``(width, height)`` at ``fps`` to
    ``out``, with ``boxes`` boxes of ``identities`` (sorted ids) from run ``session_key`` (None: no run)."""

    camera_id: str
    session_key: str | None
    out: Path
    frames: int
    size: tuple[int, int]
    fps: float
    boxes: int
    identities: tuple[int, ...]


def frame_boxes(store: Store, camera_id: str, session_key: str | None) -> tuple[str | None, FrameBoxes]:
    """The run to render and its boxes. ``session_key=None`` takes the camera's only run (none: no boxes).

    Raises ``LookupError`` (one line) for a camera the store does not know, a ``session_key`` that is not
    one of the camera's runs, or ``session_key=None`` on a camera with several runs (frame indices restart
    per run), listing what there is."""
    with store.session(readonly=True) as s:
        cameras = list(s.execute(sa.select(CameraRow.id).order_by(CameraRow.id)).scalars())
        if camera_id not in cameras:
            raise LookupError(
                f"no camera {camera_id!r} in the store (cameras: {', '.join(cameras) or 'none'})"
            )
        runs = repo.camera_runs(s, camera_id)
        if session_key is None:
            if len(runs) > 1:
                raise LookupError(
                    f"camera {camera_id!r} has {len(runs)} runs {runs}; choose one with --session (frame "
                    "indices restart per run)"
                )
            session_key = runs[0] if runs else None
        elif session_key not in runs:
            raise LookupError(f"camera {camera_id!r} has no run {session_key!r} (runs: {runs or 'none'})")
        parts = [] if session_key is None else repo.boxes_of_camera(s, camera_id, session_key=session_key)
    n = sum(len(p.track) for p in parts)
    frames = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.float32)
    ids = np.empty(n, np.int64)
    i = 0
    for p in parts:
        j = i + len(p.track)
        frames[i:j] = p.track.frames
        boxes[i:j] = p.track.boxes
        ids[i:j] = -1 if p.identity_id is None else p.identity_id
        i = j
    order = np.argsort(frames, kind="stable")
    return session_key, FrameBoxes(frames[order], boxes[order], ids[order])


def stored_view(store: Store, camera_id: str) -> tuple[str | None, Crop | None]:
    """The ``cameras.source`` and ``cameras.crop`` of ``camera_id`` (None for what is not stored, both None
    for no such camera). Raises ``ValueError`` naming the camera for a stored crop that is not a valid one."""
    with store.session(readonly=True) as s:
        row = s.execute(sa.select(CameraRow.source, CameraRow.crop).where(CameraRow.id == camera_id)).first()
    if row is None:
        return None, None
    try:
        return row.source, None if row.crop is None else check_crop(row.crop)
    except ValueError as err:
        raise ValueError(f"camera {camera_id!r}: cameras.crop in the store: {err}") from None


def render_camera(
    store: Store,
    camera_id: str,
    out: str | Path,
    *,
    source: str | None = None,
    session_key: str | None = None,
    crop: Crop | None = None,
    blur_heads: bool = False,
    max_frames: int | None = None,
    progress: bool = True,
) -> RenderReport:
    """Write ``out`` (MP4): the footage of ``camera_id`` with its stored boxes drawn in identity colours.

    ``source`` overrides the stored ``cameras.source``; ``session_key`` picks the run (see
    :func:`frame_boxes`); ``crop`` overrides the stored ``cameras.crop`` (boxes are in its pixels);
    ``blur_heads`` blurs each box's head band before drawing; ``max_frames`` stops after that many frames.
    Raises ``LookupError`` for an unknown camera or run, ``ValueError`` (:class:`SourceError` is one) when
    there is no usable recorded source or the crop does not fit it, ``OSError`` when ``out`` cannot be
    written.
    """
    run_key, boxes = frame_boxes(store, camera_id, session_key)
    own_source, own_crop = stored_view(store, camera_id)
    crop = own_crop if crop is None else crop
    if source is None:
        source = own_source
        if source is None:
            raise ValueError(f"camera {camera_id!r}: no source stored in the store; pass --source PATH")
    try:
        kind = source_kind(source)
    except ValueError as err:
        raise ValueError(f"camera {camera_id!r}: source {redact_text(source)!r}: {err}") from None
    if kind not in ("file", "images"):
        raise ValueError(
            f"camera {camera_id!r}: source {redact_text(source)!r} is a live {kind} and cannot be replayed; "
            "pass --source PATH of a recording"
        )
    out = Path(out)
    frames_written = 0
    boxes_drawn = 0
    seen: set[int] = set()
    writer: cv2.VideoWriter | None = None
    size = (0, 0)
    fps = FALLBACK_FPS
    src = open_source(camera_id, source, crop=crop, max_frames=max_frames)
    try:
        fps = src.fps or FALLBACK_FPS
        total = (
            src.num_frames
            if max_frames is None or src.num_frames is None
            else min(src.num_frames, max_frames)
        )
        with tqdm(total=total, desc=f"render {camera_id}", unit="frame", disable=not progress) as bar:
            for frame in src:
                if writer is None:
                    size = (frame.width, frame.height)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                    if not writer.isOpened():
                        raise OSError(f"camera {camera_id!r}: cannot write video {out}")
                b, ids = boxes.at(frame.frame_index)
                image = blur_head_bands(frame.image, b) if blur_heads and len(b) else frame.image
                image = draw_identities(image, b, ids)
                draw_header(image, f"{camera_id}  #{frame.frame_index}")
                writer.write(image)
                frames_written += 1
                boxes_drawn += len(ids)
                seen.update(i for i in ids if i is not None)
                bar.update(1)
    finally:
        src.close()
        if writer is not None:
            writer.release()
    if writer is None:
        raise ValueError(f"camera {camera_id!r}: source {redact_text(source)!r} gave no frame")
    return RenderReport(camera_id, run_key, out, frames_written, size, fps, boxes_drawn, tuple(sorted(seen)))


# ----------------------------------------------------------------------------------------------------
# Command line


def _crop_arg(text: str) -> Crop:
    try:
        return check_crop([int(v) for v in text.split(",")])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected x1,y1,x2,y2 integer pixels: {err}") from None


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return n


def parser(prog: str = "python -m pipeline.tools.render") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Redraw a recorded camera's footage with the global identities the store holds.",
    )
    ap.add_argument("--db", required=True, help="SQLAlchemy URL of the store, e.g. sqlite:///reid.db")
    ap.add_argument(
        "--schema", default=None, help="PostgreSQL schema of the store (default: the search path)"
    )
    ap.add_argument("--camera", required=True, help="the camera id")
    ap.add_argument("--out", required=True, help="the MP4 file to write")
    ap.add_argument("--source", default=None, help="the recording to draw on (default: the stored source)")
    ap.add_argument(
        "--session", default=None, help="the camera worker run (needed when the camera had several)"
    )
    ap.add_argument(
        "--crop",
        type=_crop_arg,
        default=None,
        help="x1,y1,x2,y2: the camera's crop (default: the stored one)",
    )
    ap.add_argument(
        "--cameras", default=None, help="cams.yaml: take the camera's crop and privacy.blur_heads from it"
    )
    ap.add_argument(
        "--blur-heads", action="store_true", help="blur each person's head band (pipeline.privacy)"
    )
    ap.add_argument("--max-frames", type=_positive, default=None, help="stop after this many frames")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {' '.join(redact_text(message).split())}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, prog: str = "render") -> int:
    """Run parsed arguments of :func:`parser`; returns the exit status."""
    crop, blur = args.crop, args.blur_heads
    if args.cameras is not None:
        from pipeline.config import ConfigError, load_config  # noqa: PLC0415 (only with --cameras)

        try:
            cfg = load_config(args.cameras)
            cam = cfg.camera(args.camera)
        except (ConfigError, KeyError) as err:
            return _fail(prog, str(err.args[0]) if isinstance(err, KeyError) else str(err))
        crop = crop if crop is not None else cam.crop
        blur = blur or cfg.privacy.blur_heads
    try:
        store = open_store(args.db, schema=args.schema)
    except StoreError as err:
        return _fail(prog, str(err))
    try:
        report = render_camera(
            store,
            args.camera,
            args.out,
            source=args.source,
            session_key=args.session,
            crop=crop,
            blur_heads=blur,
            max_frames=args.max_frames,
            progress=not args.no_progress,
        )
    except (LookupError, ValueError, SourceError, OSError) as err:
        return _fail(prog, str(err))
    finally:
        store.dispose()
    w, h = report.size
    print(
        f"{report.out}  camera {report.camera_id}  run {report.session_key}  {report.frames} frames {w}x{h} "
        f"@ {report.fps:g} fps  {report.boxes} boxes  {len(report.identities)} identities"
        + ("  heads blurred" if blur else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
