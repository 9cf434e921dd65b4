"""Recorded sources: video files (:class:`VideoFileSource`) and image folders (:class:`ImageFolderSource`).

Timestamps
    * Files: ``start_time + pts``. ``pts`` is OpenCV's ``CAP_PROP_POS_MSEC`` relative to the first frame,
      as long as it strictly increases; from the first frame where it does not (raw ``.264`` elementary
      streams report 0 for every frame), it is continued as ``previous pts + 1 / fps``. An ``fps``
      argument overrides the file's rate and makes ``pts = frame_index / fps`` for every frame.
    * Image folders: ``start_time + i / fps``.

    ``loop=True`` re-opens the source at its end and goes on until ``close()`` or ``max_frames``. Frame
    indices keep counting and every pass is offset by the total duration of the passes before it (a pass of a
    file lasts its last frame's pts + 1 / fps, a pass of a folder ``len(images) / fps``), so timestamps
    strictly increase across the seam, one frame interval apart. A pass that yields no frame (the file was
    replaced by an empty one, the images deleted) ends iteration with a warning in ``health.last_error``
    instead of looping forever.

    ``start_time`` is the argument if given (a naive ``datetime`` is taken as UTC), else the file's
    ``creation_time`` tag (ffprobe, format tags then stream tags; values before 1980 count as unset), else
    the file's modification time (for folders, the first image's).

Rate, frame count and rotation of files come from :func:`~pipeline.camera.sources.probe.probe_video` (see
there). OpenCV's FFmpeg backend already rotates frames when ``CAP_PROP_ORIENTATION_AUTO`` is on (the
default); we apply only the difference between the wanted rotation and what OpenCV says it applied, so a frame
is never rotated twice and a backend that does not rotate still gives upright frames.

Crop
    ``crop`` is in pixels of the upright frame (after rotation) and is checked against the first frame at
    open: one that does not fit raises :class:`SourceError`. A video frame that stops fitting later (the
    stream changed resolution) ends iteration like a decoding error, the reason in ``health.last_error``; an
    image of a folder that does not fit is skipped with a warning, like one that does not decode.
"""

from __future__ import annotations

import configparser
import logging
import math
import re
import time
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from pipeline.camera.crop import Crop
from pipeline.camera.source_kind import IMAGE_EXTENSIONS
from pipeline.camera.sources.base import (
    DEFAULT_IMAGE_FOLDER_FPS,
    FALLBACK_FPS,
    FrameSource,
    SourceError,
    one_line,
    to_posix,
)
from pipeline.camera.sources.probe import probe_video
from pipeline.transport.messages import Frame

__all__ = ["ImageFolderSource", "VideoFileSource"]

log = logging.getLogger(__name__)

_ROTATE_CODES = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


class _Pacer:
    """Sleeps so that a frame with presentation time ``pts`` leaves ``pts`` seconds after the first one."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._pts0 = 0.0

    def wait(self, pts: float) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0, self._pts0 = now, pts
            return
        delay = self._t0 + (pts - self._pts0) - now
        if delay > 0:
            time.sleep(delay)


# ------------------------------------------------------------------------------------------ video files


class _RecordedSource(FrameSource):
    """What a video file and an image folder share: a path, an optional fps override, looping."""

    def _open_recorded(
        self, camera_id: str, path: str | Path, *, fps: float | None, loop: bool, max_frames: int | None, crop
    ) -> None:
        FrameSource.__init__(self, camera_id, max_frames=max_frames, crop=crop)
        if fps is not None and not fps > 0:
            raise ValueError(f"camera {camera_id!r}: fps must be > 0, got {fps}")
        self._path = Path(path)
        self._loop = loop


class VideoFileSource(_RecordedSource):
    """Frames of a video file decoded with OpenCV, timestamped ``start_time + pts`` (see module docstring).

    Raises :class:`SourceError` at construction when the file is missing, cannot be opened, or yields no
    first frame. A file that stops decoding early (corrupt or truncated tail) ends iteration cleanly; when
    fewer frames came out than the file announced, ``health.last_error`` says so. ``realtime=True`` sleeps
    so frames leave at the pace of their timestamps; otherwise frames come as fast as they decode.
    ``loop=True`` re-opens the file at its end (or where it stops decoding) and goes on, frame indices and
    timestamps carried on (see the module docstring); a decoding error still ends iteration.
    """

    def __init__(
        self,
        camera_id: str,
        path: str | Path,
        *,
        start_time: datetime | None = None,
        fps: float | None = None,
        realtime: bool = False,
        max_frames: int | None = None,
        loop: bool = False,
        crop: Crop | None = None,
    ) -> None:
        self._open_recorded(camera_id, path, fps=fps, loop=loop, max_frames=max_frames, crop=crop)
        if not self._path.is_file():
            raise SourceError(f"camera {camera_id!r}: video file {self._path} does not exist")
        probe = probe_video(self._path)
        cap = cv2.VideoCapture(str(self._path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"camera {camera_id!r}: cannot open video file {self._path} (not a video)")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"camera {camera_id!r}: video file {self._path} yields no frames")
        self._cap: cv2.VideoCapture | None = cap
        self._pending: tuple[np.ndarray, float] | None = (first, cap.get(cv2.CAP_PROP_POS_MSEC))

        cv_fps = cap.get(cv2.CAP_PROP_FPS)
        cv_fps = cv_fps if math.isfinite(cv_fps) and 0 < cv_fps < 1000 else None
        self._fps_override = fps is not None
        self._fps = fps or (probe.fps if probe is not None else None) or cv_fps
        self._ts_fps = self._fps or FALLBACK_FPS

        if probe is not None:
            count, self._count_exact = probe.num_frames, probe.num_frames_exact
        else:
            cv_count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            count = int(cv_count) if math.isfinite(cv_count) and cv_count > 0 else None
            self._count_exact = False
        self._file_frames = count
        self._num_frames = self._cap_count(None if loop else count)

        # OpenCV's own rotation (when auto-orientation is on) is subtracted from the wanted one.
        cv_meta = int(round(cap.get(cv2.CAP_PROP_ORIENTATION_META))) % 360
        cv_applied = cv_meta if cap.get(cv2.CAP_PROP_ORIENTATION_AUTO) > 0 else 0
        wanted = probe.rotation if probe is not None else cv_meta
        self._rotate_code = _ROTATE_CODES.get((wanted - cv_applied) % 360)
        height, width = first.shape[:2]
        if self._rotate_code in (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE):
            width, height = height, width
        try:
            self._check_fits(width, height)
        except SourceError:
            cap.release()
            raise

        if start_time is not None:
            self._start_time = to_posix(start_time)
        elif probe is not None and probe.creation_time is not None:
            self._start_time = probe.creation_time
        else:
            self._start_time = self._path.stat().st_mtime

        self._realtime = realtime
        self._pacer = _Pacer()
        self._decoded = 0  # frames decoded over all passes: the next frame's index
        self._pass = 0
        self._pass_offset = 0.0  # seconds: the total duration of the passes before this one
        self._start_pass()
        self._health.connected(time.time(), time.monotonic())

    def _start_pass(self) -> None:
        """Reset what timestamps a pass from its own frame 0: every pass is timed like the first."""
        self._pass_decoded = 0
        self._pts_reliable = not self._fps_override
        self._pts_base = 0.0
        self._last_pos = -math.inf
        self._last_rel = 0.0

    @property
    def path(self) -> Path:
        return self._path

    def _describe(self) -> str:
        return f"video file {self._path}"

    def _relative_pts(self, index: int, pos_ms: float) -> float:
        """Seconds since frame 0 of this pass (``index`` counts within the pass): POS_MSEC while it strictly
        increases, else continued at ``1 / fps``."""
        if self._fps_override:
            return index / self._ts_fps
        pos = pos_ms / 1000.0
        if self._pts_reliable and math.isfinite(pos) and pos > self._last_pos:
            if index == 0:
                self._pts_base = pos
            self._last_pos = pos
            rel = pos - self._pts_base
        else:
            if self._pts_reliable:
                self._pts_reliable = False
                if self._pass == 0:  # every pass behaves the same: say it once
                    log.debug(
                        "camera %r: %s: no usable pts from frame %d", self._camera_id, self._path, index
                    )
            rel = self._last_rel + 1.0 / self._ts_fps if index > 0 else 0.0
        self._last_rel = rel
        return rel

    def _truncation(self) -> str | None:
        """The warning for a pass that ended with fewer frames than the file announced, else None."""
        if self._file_frames is None or self._limit_reached():
            return None
        slack = 0 if self._count_exact else 2
        if self._pass_decoded >= self._file_frames - slack:
            return None
        return (
            f"camera {self._camera_id!r}: {self._path} ended after {self._pass_decoded} of "
            f"{self._file_frames} frames (truncated or corrupt file)"
        )

    def _finish(self, error: str | None = None) -> None:
        """End of decoding: warn if the file announced more frames than came out, then release."""
        if error is None and self._pass == 0:  # later passes of a loop were checked at the first seam
            error = self._truncation()
        if error is not None:
            log.warning("%s", error)
            self._health.warn(error)
        self.close()

    def _rewind(self) -> bool:
        """At the end of a pass: re-open the file for the next one. False (after :meth:`_finish`, with the
        reason) when the pass gave no frame or the file no longer opens, so a loop cannot spin forever."""
        if self._pass_decoded == 0:
            self._finish(
                f"camera {self._camera_id!r}: {self._path} yielded no frames on pass {self._pass + 1}; "
                "stopped looping"
            )
            return False
        if self._pass == 0 and (warning := self._truncation()) is not None:
            log.warning("%s (looping over the frames that decode)", warning)
            self._health.warn(warning)
        if self._cap is None or self._closed:  # closed from another thread meanwhile
            return False
        self._cap.release()
        cap = cv2.VideoCapture(str(self._path))
        if not cap.isOpened():
            cap.release()
            self._cap = None
            self._finish(f"camera {self._camera_id!r}: cannot re-open video file {self._path} to loop")
            return False
        self._cap = cap
        self._pass_offset += self._last_rel + 1.0 / self._ts_fps
        self._pass += 1
        self._start_pass()
        log.debug("camera %r: %s: pass %d starts", self._camera_id, self._path, self._pass + 1)
        return True

    def __next__(self) -> Frame:
        while True:
            if self._cap is None:
                raise StopIteration
            if self._limit_reached():
                self._finish()
                raise StopIteration
            if self._pending is not None:
                image, pos_ms = self._pending
                self._pending = None
                break
            try:
                ok, image = self._cap.read()
            except cv2.error as e:
                self._finish(f"camera {self._camera_id!r}: decoding {self._path} failed: {one_line(str(e))}")
                raise StopIteration from None
            if ok and image is not None:
                pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                break
            if not (self._loop and self._rewind()):
                self._finish()
                raise StopIteration
        index = self._decoded
        self._decoded += 1
        rel = self._pass_offset + self._relative_pts(self._pass_decoded, pos_ms)
        self._pass_decoded += 1
        if self._rotate_code is not None:
            image = cv2.rotate(image, self._rotate_code)
        try:
            image = self._cropped(image)
        except SourceError as e:
            self._finish(str(e))
            raise StopIteration from None
        if self._realtime:
            self._pacer.wait(rel)
        self._health.frame(time.time(), time.monotonic())
        self._yielded += 1
        return Frame(self._camera_id, index, self._start_time + rel, image)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
            self._pending = None
            self._health.disconnected(time.time(), None, outage=False)
        self._closed = True


# ---------------------------------------------------------------------------------------- image folders


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _seqinfo_fps(folder: Path) -> float | None:
    """``frameRate`` of a MOTChallenge ``seqinfo.ini`` next to (or in) ``folder``, if present and valid."""
    for ini in (folder.parent / "seqinfo.ini", folder / "seqinfo.ini"):
        if not ini.is_file():
            continue
        parser = configparser.ConfigParser()
        try:
            parser.read(ini, encoding="utf-8")
            rate = parser.getfloat("Sequence", "frameRate", fallback=None)
        except (configparser.Error, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", ini, e)
            continue
        if rate is not None and math.isfinite(rate) and rate > 0:
            return rate
    return None


class ImageFolderSource(_RecordedSource):
    """Images of a folder (``.jpg/.jpeg/.png/.bmp``, natural name order: ``2.jpg`` before ``10.jpg``).

    ``fps``: the argument, else ``frameRate`` of a MOTChallenge ``seqinfo.ini`` in the parent folder, else 25.
    ``frame_index`` is the image's position in the folder; timestamps ``start_time + frame_index / fps``. An
    image that fails to decode after the first is skipped with a warning in ``health.last_error``.
    ``loop=True`` starts again at the first image after the last; pass ``k`` (from 0) counts the positions on
    from ``k * len(images)``, so indices and timestamps keep increasing. Images are read again each pass.
    Raises :class:`SourceError` when the folder holds no images or its first image does not decode.
    """

    def __init__(
        self,
        camera_id: str,
        path: str | Path,
        *,
        start_time: datetime | None = None,
        fps: float | None = None,
        realtime: bool = False,
        max_frames: int | None = None,
        loop: bool = False,
        crop: Crop | None = None,
    ) -> None:
        self._open_recorded(camera_id, path, fps=fps, loop=loop, max_frames=max_frames, crop=crop)
        if not self._path.is_dir():
            raise SourceError(f"camera {camera_id!r}: image folder {self._path} does not exist")
        self._files = sorted(
            (p for p in self._path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: _natural_key(p.name),
        )
        if not self._files:
            raise SourceError(
                f"camera {camera_id!r}: image folder {self._path} has no {'/'.join(IMAGE_EXTENSIONS)} images"
            )
        first = cv2.imread(str(self._files[0]), cv2.IMREAD_COLOR)
        if first is None:
            raise SourceError(f"camera {camera_id!r}: first image {self._files[0]} does not decode")
        self._check_fits(int(first.shape[1]), int(first.shape[0]))
        self._pending: np.ndarray | None = first
        self._fps = fps or _seqinfo_fps(self._path) or DEFAULT_IMAGE_FOLDER_FPS
        self._num_frames = self._cap_count(None if loop else len(self._files))
        self._start_time = to_posix(start_time) if start_time is not None else self._files[0].stat().st_mtime
        self._realtime = realtime
        self._pacer = _Pacer()
        self._next_index = 0  # position in the folder of the next image
        self._pass = 0
        self._pass_yielded = 0
        self._health.connected(time.time(), time.monotonic())

    @property
    def path(self) -> Path:
        return self._path

    def _describe(self) -> str:
        return f"image folder {self._path}"

    def __next__(self) -> Frame:
        while not self._closed and not self._limit_reached():
            if self._next_index == len(self._files):
                if not self._loop:
                    break
                if self._pass_yielded == 0:  # every image failed this pass: the next would fail too
                    msg = (
                        f"camera {self._camera_id!r}: no image of {self._path} decoded on pass "
                        f"{self._pass + 1}"
                    )
                    log.warning("%s; stopped looping", msg)
                    self._health.warn(msg)
                    break
                self._next_index, self._pass, self._pass_yielded = 0, self._pass + 1, 0
            position = self._next_index
            self._next_index += 1
            if self._pending is not None:
                image, self._pending = self._pending, None
            else:
                image = cv2.imread(str(self._files[position]), cv2.IMREAD_COLOR)
            if image is None:
                msg = f"camera {self._camera_id!r}: skipped image {self._files[position]} (does not decode)"
                log.warning("%s", msg)
                self._health.warn(msg)
                continue
            try:
                image = self._cropped(image)
            except SourceError as e:
                msg = f"{e}; skipped image {self._files[position].name}"
                log.warning("%s", msg)
                self._health.warn(msg)
                continue
            index = self._pass * len(self._files) + position
            rel = index / self._fps
            if self._realtime:
                self._pacer.wait(rel)
            self._health.frame(time.time(), time.monotonic())
            self._yielded += 1
            self._pass_yielded += 1
            return Frame(self._camera_id, index, self._start_time + rel, image)
        self.close()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._pending = None
            self._health.disconnected(time.time(), None, outage=False)
        self._closed = True
