"""Errors at the door: every input a run needs is checked before any worker process starts.

:func:`check_at_door` looks at each selected camera's source (a video file exists and decodes a first frame,
an image folder holds a decodable first image, a URL is well formed, a webcam index names a device that is
present), the detector weights and the re-ID checkpoint. The first bad one raises :class:`DoorError`, whose
one-line message names the camera or the config key; ``run_pipeline.py`` prints it and exits with code 2,
and since the door comes before the store is opened, nothing is written to SQL. A live source that is well
formed but unreachable passes: it keeps reconnecting as it always does.

The re-ID model is loaded exactly as the re-ID worker loads it (the checkpoint with ``torch.load(...,
weights_only=True)`` and its layout check, then the backbone weights: the configured ones, else the default
checkpoint's, from ``../shared`` or their public source), on the CPU, in a short-lived process started first,
so the parent never imports torch (several hundred MB it would keep for the whole run) and the cameras are
probed meanwhile.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from common.redact import redact_url
from pipeline.camera.source_kind import source_kind
from pipeline.config import CameraConfig, PipelineConfig
from pipeline.runtime.compose import MatchingThreshold
from pipeline.runtime.supervise import describe, held_signals

__all__ = ["DoorError", "check_at_door", "selected_cameras"]

REID_PROBE_TIMEOUT_S = 120.0
_WEIGHTS_HELP = "give the path to a .pt file or an exported *_openvino_model folder (nothing is downloaded)"


class DoorError(ValueError):
    """An input a run needs is missing or unusable; the message is one line naming the camera or the key."""


def check_at_door(
    cfg: PipelineConfig,
    *,
    cameras: bool = False,
    reid: bool = False,
    only: Sequence[str] | None = None,
    out_dir: str | None = None,
) -> MatchingThreshold | None:
    """Check what a command needs before it starts anything; raise :class:`DoorError` on the first bad input.

    ``cameras``: the sources of the enabled cameras (the ``only`` ones, when given) and ``detector.weights``,
    in that order. ``reid``: the re-ID model loads from ``reid.checkpoint`` (the project's default one when
    unset) and ``reid.backbone_weights`` (when set; else the checkpoint's own), and ``matcher.threshold``
    resolves (``auto`` needs a checkpoint that records one): the resolved threshold is returned. ``out_dir`` (``--out``) must be a folder or not exist yet. Returns
    None when ``reid`` is false. Takes a few seconds at most: it decodes one frame per recorded camera and
    reads the checkpoint, but connects to no live source and writes nothing.
    """
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DoorError(f"--out: {out_dir} exists and is not a folder")
    probe = _ReidModelProbe(cfg) if reid else None
    try:
        if cameras:
            for cam in selected_cameras(cfg, only):
                check_source(cam)
            check_detector_weights(cfg.detector.weights)
            check_tracker_name(cfg.tracker.name)
        return probe.result() if probe is not None else None
    finally:
        if probe is not None:
            probe.close()


def selected_cameras(cfg: PipelineConfig, only: Sequence[str] | None) -> tuple[CameraConfig, ...]:
    """:meth:`PipelineConfig.selected_cameras`, its error as a :class:`DoorError`."""
    try:
        return cfg.selected_cameras(only)
    except ValueError as exc:
        raise DoorError(str(exc)) from None


def check_source(cam: CameraConfig) -> None:
    """One camera's source, by :func:`~pipeline.camera.source_kind.source_kind`: a file or image folder is
    opened as the camera worker opens it (first frame decoded, then closed); a URL must be well formed; a
    webcam index must name a device (Linux: ``/dev/videoN``; elsewhere the camera worker's open decides)."""
    from pipeline.camera.sources import SourceError, open_source

    try:
        kind = source_kind(cam.source)
    except ValueError as exc:
        raise DoorError(f"camera {cam.id!r}: source: {exc}") from None
    if kind == "live":
        _check_url(cam.id, cam.source)
    elif kind == "webcam":
        device = Path(f"/dev/video{int(cam.source)}")
        if sys.platform.startswith("linux") and not device.exists():
            raise DoorError(f"camera {cam.id!r}: webcam index {cam.source} is not present (no {device})")
    else:
        try:
            path = _resolved(cam.source)
            with _native_stderr_discarded(), open_source(cam.id, path, fps=cam.fps, crop=cam.crop):
                pass
        except SourceError as exc:
            raise DoorError(str(exc)) from None
        except (FileNotFoundError, ValueError) as exc:  # a sample that cannot be fetched; a bad fps
            raise DoorError(f"camera {cam.id!r}: {exc}") from None


def check_detector_weights(weights: str) -> None:
    """``detector.weights`` must exist: a file (``.pt``...) or an exported model folder (``*_openvino_model``).
    A bare name (``yolo11n.pt``) is looked for in the working directory, as the detector does."""
    try:
        path = Path(_resolved(weights)).expanduser()
    except FileNotFoundError as exc:  # a known sample, absent and not downloadable now
        raise DoorError(f"detector.weights: {exc}") from None
    if not path.exists():
        where = f" (no such file in {Path.cwd()})" if path.parent == Path(".") else ""
        raise DoorError(f"detector.weights: {weights} not found{where}; {_WEIGHTS_HELP}")


def check_tracker_name(name: str) -> None:
    """``tracker.name`` must be a key of the tracker plug-in dict (its parameters are checked when the camera
    worker builds it, which may load a re-ID model)."""
    from trackers import TRACKERS

    if name not in TRACKERS:
        raise DoorError(f"tracker.name: unknown tracker {name!r} (valid: {', '.join(TRACKERS)})")


def _resolved(path: str) -> str:
    """``path``, or for a known ``shared/`` sample that is absent, its cached copy (fetched once; see
    :func:`models.samples.resolve_sample`). Imported only then: the module loads torch."""
    if Path(path).expanduser().exists():
        return path
    from models.samples import resolve_sample

    return resolve_sample(path)


def _check_url(camera_id: str, url: str) -> None:
    """A live URL must parse, name a host (a ``udp://`` one may give only a port, to listen on) and hold no
    white space; the password never reaches the message."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in 0..65535
    except ValueError as exc:
        raise DoorError(f"camera {camera_id!r}: source {shown} is not a well-formed URL ({exc})") from None
    if any(ch.isspace() for ch in url):
        raise DoorError(
            f"camera {camera_id!r}: source {shown} is not a well-formed URL (contains white space)"
        )
    if not parts.hostname and not (parts.scheme.lower() == "udp" and port):
        raise DoorError(f"camera {camera_id!r}: source {shown} is not a well-formed URL (no host)")


@contextlib.contextmanager
def _native_stderr_discarded() -> Iterator[None]:
    """Send what native code writes to file descriptor 2 (FFmpeg's own ``moov atom not found``...) to
    /dev/null: the door's verdict is its one-line error, and the camera worker logs FFmpeg as usual."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ------------------------------------------------------------------------------------- the checkpoint


def _load_reid_model(cfg: PipelineConfig, conn) -> None:
    """In the probe process: load the re-ID model as the re-ID worker will (``reid.checkpoint`` None: the
    default one), on the CPU, and resolve the matcher's threshold as the matcher will. Sends back
    ``("ok", MatchingThreshold)`` when both work, else ``(key, one-line reason)``."""
    checkpoint, backbone_weights = cfg.reid.checkpoint, cfg.reid.backbone_weights
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # torch's import-time warnings are not the door's verdict
    from models.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_drsta, read_checkpoint

    path = checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT
    verdict: tuple[str, str] | None = None
    try:
        read_checkpoint(path)
    except CheckpointError as exc:
        verdict = ("reid.checkpoint", str(exc) if checkpoint is not None else f"(the default) {exc}")
    else:
        try:
            load_drsta(path, backbone_weights=backbone_weights)
        except Exception as exc:  # whatever stops the model loading is this input's verdict, sent back whole
            which = backbone_weights or "(the checkpoint's own)"
            verdict = ("reid.backbone_weights", f"{which} do not load: {describe(exc)}")
    if verdict is None:
        from pipeline.runtime.compose import matching_threshold

        try:
            verdict = ("ok", matching_threshold(cfg))
        except ValueError as exc:
            msg = str(exc)
            key = (
                "matcher.camera_centering"
                if msg.startswith("matcher.camera_centering: ")
                else "matcher.threshold"
            )
            verdict = (key, msg.removeprefix(f"{key}: "))
    conn.send(verdict)
    conn.close()


class _ReidModelProbe:
    """A spawned process loading the re-ID model; :meth:`result` raises its verdict as a DoorError."""

    def __init__(self, cfg: PipelineConfig) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_load_reid_model,
            args=(cfg, child_conn),
            name="door-reid-model",
            daemon=True,
        )
        with held_signals():  # Ctrl-C is the parent's to handle, not a traceback in the probe
            self._proc.start()
        child_conn.close()

    def result(self) -> MatchingThreshold:
        if not self._conn.poll(REID_PROBE_TIMEOUT_S):
            raise DoorError(
                f"reid.checkpoint: the re-ID model did not load within {REID_PROBE_TIMEOUT_S:g} s"
            )
        try:
            verdict = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise DoorError(
                f"reid.checkpoint: the process loading the re-ID model died (exit code {self._proc.exitcode})"
            ) from None
        key, reason = verdict
        if key != "ok":
            raise DoorError(f"{key}: {reason}")
        return reason

    def close(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()  # signals are held in it: SIGKILL is what ends it
        self._proc.join(5)
        self._conn.close()
