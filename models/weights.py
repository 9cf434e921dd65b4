"""Finding and loading weight files: local paths, cached downloads, safe (weights-only) unpickling.

Nothing here runs code from a checkpoint: every load is ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn
from tqdm import tqdm

DEFAULT_CACHE_DIR = Path("~/.cache/reid-pipeline/weights")
CACHE_DIR_ENV = "REID_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 10.0  # per connect / per read; a dead or offline host must not hang a pipeline start
_CHUNK = 1 << 20
_WRAPPER_KEYS = ("state_dict", "model")


def cache_dir_default() -> Path:
    """``$REID_CACHE_DIR`` if set, else ``~/.cache/reid-pipeline/weights``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(label: str | Path, actual: str, expected: str) -> None:
    """Raise ValueError unless ``actual`` matches ``expected``.

    ``expected`` is a full 64-hex sha256, or a prefix of one (at least 8 hex digits), as torchvision puts
    in its file names (``resnet18-f37072fd.pth``).
    """
    exp = expected.lower()
    if len(exp) < 8:
        raise ValueError(f"sha256 for {label} must have at least 8 hex digits, got {expected!r}")
    if not actual.startswith(exp):
        raise ValueError(f"sha256 mismatch for {label}: expected {exp}, got {actual}")


def _is_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _download(url: str, dest: Path, *, sha256: str | None, name: str) -> None:
    """Stream ``url`` into a temp file next to ``dest``; rename it to ``dest`` only once the hash matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                        while chunk := resp.read(_CHUNK):
                            out.write(chunk)
                            h.update(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", None) or e
                raise FileNotFoundError(
                    f"{name} not available: download of {url} failed ({reason}); download the file elsewhere "
                    f"and pass its local path instead, or place it at {dest}"
                ) from None
        if sha256:
            _check_sha256(url, h.hexdigest(), sha256)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_weights(
    source: str | Path | None,
    *,
    sha256: str | None = None,
    cache_dir: Path | None = None,
    name: str = "weights",
) -> Path | None:
    """Turn a weights source into a local file path.

    source: None (returns None: the caller decides what "no weights" means), a local path, or an
        ``http(s)://`` URL. A URL is downloaded once into ``cache_dir`` (default ``cache_dir_default()``)
        under its basename and reused afterwards.
    sha256: expected hex digest (or a prefix of >= 8 digits); checked for local files, cached files and
        downloads. A download is written to a temp file and renamed into the cache only after it matches.
    name: what the weights are, used in error messages.

    Raises FileNotFoundError (one line) when a local path does not exist or a download fails or times out,
    and ValueError naming the file, expected and actual hash when the sha256 does not match.
    """
    if source is None:
        return None
    if not _is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name} not found: {path} does not exist")
        if sha256:
            _check_sha256(path, sha256_file(path), sha256)
        return path
    url = str(source)
    filename = Path(urlparse(url).path).name
    if not filename:
        raise ValueError(f"{name}: cannot derive a file name from the URL {url}")
    dest = (cache_dir if cache_dir is not None else cache_dir_default()) / filename
    if dest.is_file():
        if sha256:
            _check_sha256(dest, sha256_file(dest), sha256)
    else:
        _download(url, dest, sha256=sha256, name=name)
    return dest


def _unwrap(obj: object) -> object:
    """Peel ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers (possibly nested) off a checkpoint."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    return obj


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from ``path`` on CPU without running any code from the file.

    Unwraps ``{"state_dict": ...}`` and ``{"model": ...}`` and strips a ``module.`` prefix (DataParallel)
    when every key has it. Raises ValueError when the file needs code to unpickle (refused by
    ``weights_only=True``) or does not hold a mapping of names to tensors.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"refusing to load {path}: it is not a plain weights file and torch.load(weights_only=True) "
            f"rejected it ({first}); re-save it as a plain state_dict from trusted code"
        ) from None
    sd = _unwrap(obj)
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{path} does not hold a state_dict (got {type(sd).__name__})")
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path} is not a state_dict of tensors: entries {bad[:5]} are not str -> Tensor")
    if all(k.startswith("module.") for k in sd):
        return {k.removeprefix("module."): v for k, v in sd.items()}
    return dict(sd)


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str, source: str | Path
) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with a short error when the weights do not fit.

    Raises ValueError naming ``what`` (the architecture) and ``source`` (the file), with counts and a few
    examples of missing keys, unexpected keys and shape mismatches, instead of torch's key dump.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: expected {tuple(own[k].shape)}, got {tuple(state_dict[k].shape)}"
        for k in own
        if k in state_dict and own[k].shape != state_dict[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if items
        ]
        raise ValueError(f"weights {source} do not fit {what}: {'; '.join(parts)}")
    module.load_state_dict(state_dict, strict=True)
