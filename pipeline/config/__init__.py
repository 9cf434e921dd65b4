"""The ``cams.yaml`` configuration: its schema (:mod:`pipeline.config.schema`) loaded by the one config loader
(:mod:`common.config_loader`, also used by ``models.train``).

Precedence is code defaults < YAML < command-line overrides. Every default and every rule is written once, in
the schema's dataclass fields and checks.

Public API
----------
- :func:`load_config` reads a YAML file, applies ``--set key=value`` overrides and returns a validated
  :class:`PipelineConfig`.
- :func:`apply_overrides` applies overrides to an existing config and returns a new one.
- :func:`config_from_dict` validates an already-parsed mapping (what ``yaml.safe_load`` returns).
- :func:`config_to_dict` turns a config into plain data for logging, with secrets redacted.
- :class:`ConfigError` (a ``ValueError``) is the only exception bad input raises. Its message is one line:
  ``<file>: <dotted.key>: <what is wrong>``, e.g. ``cams.yaml: detector.conf: expected a number, got 'high'``.
  Errors caused by an override say so: ``cams.yaml (--set): detector.conf: ...``.

Conventions (the loader's, see :mod:`common.config_loader`)
-------------------------------------------------------------
- Types are strict: a string where a number is expected is an error, an int where a float is expected is
  fine, a bool is never a number, a YAML list is fine where a tuple is typed. A section may be left empty
  (``detector:``) to take all its defaults.
- Cameras are addressed by index in YAML error messages (``cameras[1].fps``) and by id in overrides
  (``cameras.cam1.fps=5``); topology links by index in both (``topology.links.0.max_transit_s=60``).
- Relative paths in ``cameras[].source``, ``reid.checkpoint`` and ``reid.backbone_weights`` are resolved
  relative to the directory of the YAML file; so is ``detector.weights`` when it contains a ``/``. Paths given
  with ``--set`` are resolved relative to the current working directory. ``~`` is expanded. URLs and webcam
  indices are never touched. ``db.url`` is handed to SQLAlchemy unchanged.
- ``${NAME}`` in ``queue.redis_url``, ``db.url`` and ``cameras[].source`` is replaced by the environment
  variable ``NAME`` at load time (an unset variable is an error); ``$$`` stands for a literal ``$``.
- ``start_time`` is timezone-aware; a time written without an offset is taken as UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config_loader import ConfigError, from_mapping, load_yaml, to_plain, with_overrides
from pipeline.config.schema import (
    DEFAULT_DETECTOR_WEIGHTS,
    CameraConfig,
    DBConfig,
    DetectorConfig,
    LiveConfig,
    MatcherConfig,
    PipelineConfig,
    QueueConfig,
    ReIDConfig,
    ReplayConfig,
    TopologyConfig,
    TopologyLink,
    TrackerConfig,
    TrackletConfig,
)

__all__ = [
    "DEFAULT_DETECTOR_WEIGHTS",
    "CameraConfig",
    "ConfigError",
    "DBConfig",
    "DetectorConfig",
    "LiveConfig",
    "MatcherConfig",
    "PipelineConfig",
    "QueueConfig",
    "ReIDConfig",
    "ReplayConfig",
    "TopologyConfig",
    "TopologyLink",
    "TrackerConfig",
    "TrackletConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read and validate a ``cams.yaml``, then apply ``--set`` overrides (``"detector.conf=0.4"``,
    ``"cameras.cam1.fps=5"``; values are parsed as YAML). Relative paths resolve against the file's folder.

    Raises ConfigError (one line, naming the file and the key) for a missing or unreadable file, a YAML syntax
    error (with its line), and any invalid value or override; no other exception escapes for bad input.
    """
    return load_yaml(PipelineConfig, path, overrides)


def config_from_dict(
    data: Any,
    *,
    base_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> PipelineConfig:
    """Validate an already-parsed config mapping (as ``yaml.safe_load`` returns it).

    Relative paths resolve against ``base_dir`` (default: the working directory); ``${NAME}`` uses ``env``
    (default: ``os.environ``). ``source`` names the input in error messages. Raises ConfigError only.
    """
    return from_mapping(PipelineConfig, data, base_dir=base_dir, env=env, source=source)


def apply_overrides(cfg: PipelineConfig, overrides: Sequence[str]) -> PipelineConfig:
    """Return ``cfg`` with ``key=value`` overrides applied and the result validated again.

    Relative paths in override values resolve against the working directory; ``${NAME}`` in them is
    substituted. Raises ConfigError whose source is ``--set``.
    """
    return with_overrides(cfg, overrides)


def config_to_dict(cfg: PipelineConfig) -> dict[str, Any]:
    """Plain data (dicts, lists, str, numbers, None; times as ISO 8601 strings) for logging. Passwords in
    ``queue.redis_url``, ``db.url`` and camera URLs are replaced by ``***``; the result cannot be reloaded
    to the same config when it had secrets."""
    return to_plain(cfg, for_log=True)
