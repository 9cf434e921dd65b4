"""The one config loader: typed frozen-dataclass sections, loaded from YAML, validated at load.

Used for ``cams.yaml`` (:mod:`pipeline.config.schema`) and for the training configs (:mod:`models.train`), so
both follow the same rules. Precedence is code defaults < YAML < command-line overrides; every default is
written once, in the dataclass fields of a schema, and the loader only fills in the keys the YAML (or an
override) gives.

Public API
----------
- :class:`Section` is the base of every schema section: it normalises and type-checks its fields on
  construction (so a section built in code is checked like one loaded from YAML) and runs its ``_check``.
  Plain (non-``Section``) dataclasses may appear inside a schema too; a ``ValueError`` from their
  ``__post_init__`` becomes a :class:`ConfigError` naming their key, and the field's key when the message
  starts with ``<field>: `` (as :class:`models.drsta.DRSTAConfig`'s do).
- :func:`load_yaml` reads a YAML file into a root section class, applying ``--set key=value`` overrides.
- :func:`from_mapping` validates an already-parsed mapping (what ``yaml.safe_load`` returns).
- :func:`with_overrides` applies overrides to an existing config and returns a new one.
- :func:`to_plain` turns a config into plain data; with ``for_log=True`` secrets are redacted.
- :func:`need`, :func:`check_min`, :func:`check_between`, :func:`check_choice`, :func:`check_device` are
  the checks a section's ``_check`` uses; each raises a :class:`ConfigError` whose key is the field name.
- :class:`ConfigError` (a ``ValueError``) is the only exception bad input raises. Its message is one line:
  ``<file>: <dotted.key>: <what is wrong>``, e.g. ``cams.yaml: detector.conf: expected a number, got 'high'``.
  Errors caused by an override say so: ``cams.yaml (--set): detector.conf: ...``.

Conventions
-----------
- Types are strict: a string where a number is expected is an error, an int where a float is expected is
  fine, a bool is never a number, a YAML list is fine where a tuple is typed. A section may be left empty
  (``detector:``) to take all its defaults.
- Items of a list of sections are addressed by index (``stages[1].lr``, override ``stages.1.lr=0.01``), or,
  when the item class sets ``override_key`` (cameras: ``"id"``), by that key in overrides
  (``cameras.cam1.fps=5``); error messages always use the index.
- Field metadata: ``secret`` (redacted in ``repr`` and logs), ``env`` (``${NAME}`` is replaced by the
  environment variable ``NAME`` at load time, an unset one is an error, ``$$`` is a literal ``$``), ``path``
  (a predicate ``str -> bool``: when it holds, a relative path is resolved against the YAML file's folder, or
  the working directory for a ``--set`` value; ``~`` is expanded) and ``coerce`` (a function applied to the
  raw value before the type check).
- A ``datetime`` is timezone-aware; a time written without an offset is taken as UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from common.redact import redact_url

__all__ = [
    "ConfigError",
    "Section",
    "check_between",
    "check_choice",
    "check_device",
    "check_min",
    "from_mapping",
    "load_yaml",
    "need",
    "show",
    "to_plain",
    "with_overrides",
]

C = TypeVar("C")

WORD = re.compile(r"[A-Za-z0-9_-]+")
URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_DEVICE = re.compile(r"auto|cpu|cuda(?::[0-9]+)?")
_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_ENV_REF = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)\}|(\{))")
_MAX_DATA_DEPTH = 32


# ----------------------------------------------------------------------------------------------------
# Errors and checks


class ConfigError(ValueError):
    """Invalid configuration. ``str(err)`` is one line: ``<source>: <key>: <detail>`` (empty parts omitted).

    ``source`` names where the input came from (the YAML path as given, ``"<file> (--set)"`` for an override,
    or the dataclass name when a section is constructed directly), ``key`` is the dotted key
    (``cameras[1].fps``), ``detail`` says what is wrong. Echoed values have URL credentials redacted.
    """

    def __init__(self, detail: str, *, key: str = "", source: str = "") -> None:
        self.detail, self.key, self.source = detail, key, source
        text = ": ".join(part for part in (source, key, detail) if part)
        super().__init__(_LINE_BREAK.sub(lambda m: repr(m.group())[1:-1], text))


def show(value: Any) -> str:
    """Short one-line description of a user-supplied value for an error message, secrets redacted."""
    if isinstance(value, str):
        text = repr(redact_url(value))
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        text = repr(value)
    elif isinstance(value, int):
        text = repr(value) if abs(value) < 10**30 else "a very large integer"
    elif isinstance(value, dt.date):
        text = value.isoformat()
    elif isinstance(value, Mapping):
        return "a mapping"
    elif isinstance(value, list | tuple):
        return "a list"
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _name(key: Any) -> str:
    """A mapping key as it appears in a dotted error key."""
    return key if isinstance(key, str) and WORD.fullmatch(key) else show(key)


def _join(prefix: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    if not prefix or not part:
        return prefix or part
    return prefix + part if part.startswith("[") else f"{prefix}.{part}"


def need(ok: bool, key: str, detail: str) -> None:
    """Raise ``ConfigError(detail, key=key)`` unless ``ok``."""
    if not ok:
        raise ConfigError(detail, key=key)


def check_min(obj: Any, name: str, low: float, *, strict: bool = False) -> None:
    """Field ``name`` of ``obj`` must be ``>= low`` (``> low`` when ``strict``); ``None`` passes."""
    value = getattr(obj, name)
    if value is not None:
        ok = value > low if strict else value >= low
        need(ok, name, f"must be {'>' if strict else '>='} {low}, got {show(value)}")


def check_between(obj: Any, name: str, low: float, high: float, *, open_low: bool = False) -> None:
    """Field ``name`` of ``obj`` must lie in ``[low, high]`` (``(low, high]`` when ``open_low``)."""
    value = getattr(obj, name)
    ok = (low < value if open_low else low <= value) and value <= high
    bounds = f"> {low} and <= {high}" if open_low else f"between {low} and {high}"
    need(ok, name, f"must be {bounds}, got {show(value)}")


def check_choice(obj: Any, name: str, choices: Sequence[str]) -> None:
    """Field ``name`` of ``obj`` (a string, or a tuple of strings) must be among ``choices``."""
    value = getattr(obj, name)
    for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
        key = f"{name}[{i}]" if isinstance(value, tuple) else name
        need(v in choices, key, f"expected one of {', '.join(choices)}, got {show(v)}")


def check_device(obj: Any, name: str) -> None:
    """Field ``name`` of ``obj`` must name a torch device: ``auto`` (CUDA when present), ``cpu``, ``cuda``,
    ``cuda:N``."""
    value = getattr(obj, name)
    need(bool(_DEVICE.fullmatch(value)), name, f"expected auto, cpu, cuda or cuda:N, got {show(value)}")


# ----------------------------------------------------------------------------------------------------
# Sections


class Section:
    """Base of every section: normalises field values (lists to tuples, ints to floats, naive times to UTC)
    and validates them on construction, so a section built in code is checked like one loaded from YAML.

    Subclasses are ``@dataclass(frozen=True, kw_only=True, repr=False)`` and may define ``_check`` (range and
    cross-field rules, raising :class:`ConfigError` with a key relative to the section) and ``override_key``
    (the field by which an item of a list of these is addressed in overrides).
    """

    override_key: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        try:
            for f in dataclasses.fields(self):  # type: ignore[arg-type]
                value = getattr(self, f.name)
                new = _convert(value, hints[f.name], f.name, _DIRECT, f.metadata)
                if new is not value:
                    object.__setattr__(self, f.name, new)
            self._check()
        except ConfigError as err:
            raise ConfigError(err.detail, key=err.key, source=type(self).__name__) from None

    def _check(self) -> None:
        """Range and cross-field checks; raise ConfigError with ``key`` relative to this section."""

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.metadata.get("secret") and isinstance(value, str):
                value = redact_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# ----------------------------------------------------------------------------------------------------
# Conversion of parsed YAML into sections


@dataclass(frozen=True)
class _Ctx:
    base_dir: Path | None  # relative paths are resolved against it; None leaves them as they are
    env: Mapping[str, str] | None  # ${NAME} substitution; None disables it


_DIRECT = _Ctx(base_dir=None, env=None)


@dataclass(frozen=True)
class _Override:
    """A ``--set`` value for a path field: relative paths in it resolve against ``base_dir`` (the cwd)."""

    value: Any
    base_dir: Path


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(value: Any, tp: Any, key: str, ctx: _Ctx, meta: Mapping[str, Any]) -> Any:
    """Convert one field's raw value: ``${NAME}`` substitution, coercion, type check, path resolution."""
    if isinstance(value, _Override):
        ctx = dataclasses.replace(ctx, base_dir=value.base_dir)
        value = value.value
    if meta.get("env") and ctx.env is not None and isinstance(value, str):
        value = _substitute_env(value, key, ctx.env)
    if "coerce" in meta:
        try:
            value = meta["coerce"](value)
        except ConfigError as err:
            raise ConfigError(err.detail, key=key) from None
    value = _convert_type(value, tp, key, ctx)
    if "path" in meta and isinstance(value, str) and ctx.base_dir is not None:
        value = _resolve_path(value, meta["path"], ctx.base_dir)
    return value


def _convert_type(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return _plain_data(value, key, 0, ())
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        return _convert_type(value, _strip_optional(tp), key, ctx)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_section(tp, value, key, ctx)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {show(value)}", key=key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert_type(v, args[0], _join(key, i), ctx) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"expected a list of {len(args)} items, got {len(value)}", key=key)
        return tuple(
            _convert_type(v, a, _join(key, i), ctx) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {show(value)}", key=key)
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"keys must be strings, got {show(k)}", key=key)
        return {k: _plain_data(v, _join(key, _name(k)), 1, ()) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {show(value)}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {show(value)}", key=key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {show(value)}", key=key)
        try:
            number = float(value)
        except OverflowError:
            raise ConfigError(f"number out of range: {show(value)}", key=key) from None
        if not math.isfinite(number):
            raise ConfigError(f"expected a finite number, got {show(value)}", key=key)
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {show(value)}", key=key)
        return value
    if tp is dt.datetime:
        return _parse_time(value, key)
    raise TypeError(f"config schema: unsupported field type {tp!r} at {key}")  # a bug in the schema


def _build_section(cls: type, value: Any, key: str, ctx: _Ctx) -> Any:
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}  # an empty section (``detector:``) takes all defaults
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a mapping, got {show(value)}", key=key)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for k in value:
        if not (isinstance(k, str) and k in names):
            raise ConfigError(f"unknown key (valid: {', '.join(names)})", key=_join(key, _name(k)))
    hints = _hints(cls)
    kwargs = {}
    for f in fields:
        if f.name in value:
            kwargs[f.name] = _convert(value[f.name], hints[f.name], _join(key, f.name), ctx, f.metadata)
        elif _is_required(f):
            raise ConfigError("missing required key", key=_join(key, f.name))
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(err.detail, key=_join(key, err.key)) from None
    except ValueError as err:  # a plain dataclass's own __post_init__ rule (e.g. models.drsta.DRSTAConfig)
        name, sep, detail = str(err).partition(": ")
        if sep and name in names:
            raise ConfigError(detail, key=_join(key, name)) from None
        raise ConfigError(str(err), key=key) from None


def _plain_data(value: Any, key: str, depth: int, parents: tuple[int, ...]) -> Any:
    """Copy free-form YAML data (``tracker.params``), rejecting cycles, deep nesting and non-YAML types."""
    if value is None or isinstance(value, str | bool | int | float | bytes | dt.date):
        return value
    if depth > _MAX_DATA_DEPTH:
        raise ConfigError(f"nested deeper than {_MAX_DATA_DEPTH} levels", key=key)
    if id(value) in parents:
        raise ConfigError("contains a reference to itself", key=key)
    inner = (*parents, id(value))
    if isinstance(value, Mapping):
        return {k: _plain_data(v, _join(key, _name(k)), depth + 1, inner) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain_data(v, _join(key, i), depth + 1, inner) for i, v in enumerate(value))
    raise ConfigError(f"expected plain YAML data, got {show(value)}", key=key)


def _parse_time(value: Any, key: str) -> dt.datetime:
    example = "e.g. 2024-05-14T09:00:00+02:00"
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, dt.date):
        raise ConfigError(f"expected a date and time ({example}), got a date only: {show(value)}", key=key)
    elif isinstance(value, str):
        text = value.strip()
        if not re.search(r"[Tt ]", text):
            raise ConfigError(f"expected an ISO 8601 date and time ({example}), got {show(value)}", key=key)
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(
                f"expected an ISO 8601 date and time ({example}), got {show(value)}", key=key
            ) from None
    else:
        raise ConfigError(f"expected an ISO 8601 date and time ({example}), got {show(value)}", key=key)
    if t.tzinfo is None or t.utcoffset() is None:
        t = t.replace(tzinfo=dt.UTC)  # documented: a time without an offset is UTC
    try:
        t.timestamp()
    except (OverflowError, ValueError, OSError):
        raise ConfigError(f"date and time out of range: {show(value)}", key=key) from None
    return t


def _substitute_env(text: str, key: str, env: Mapping[str, str]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        name = m.group(2)
        if name is None:
            raise ConfigError(
                "malformed ${...}: write ${NAME} (letters, digits, _) or $$ for a literal $", key=key
            )
        if name not in env:
            raise ConfigError(f"environment variable {name} is not set", key=key)
        return env[name]

    return _ENV_REF.sub(replace, text)


def _resolve_path(value: str, is_path: Callable[[str], bool], base_dir: Path) -> str:
    if not value.strip() or URL_SCHEME.match(value) or not is_path(value):
        return value  # empty: rejected by the section's check; URLs and names are not paths
    path = os.path.expanduser(value)
    out = os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))
    if value.endswith(("/", os.sep)) and not out.endswith(os.sep):
        out += os.sep  # keep the "this is a folder" hint
    return out


# ----------------------------------------------------------------------------------------------------
# Overrides


def _merge_overrides(
    root_cls: type, raw: Mapping[Any, Any], overrides: Sequence[str], source: str
) -> tuple[dict[Any, Any], list[tuple[str, str]]]:
    """Apply ``key=value`` overrides to a copy of the raw mapping (copying only along the paths they touch).

    Returns the merged mapping and, per override, ``(internal key, key as typed)``, e.g.
    ``("cameras[0].fps", "cameras.cam1.fps")``, so that later errors can be blamed on the override.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    origin = f"{source} (--set)" if source else "--set"
    root: dict[Any, Any] = dict(raw)
    blame: list[tuple[str, str]] = []
    for text in overrides:
        key_text, sep, value_text = text.partition("=")
        key_text = key_text.strip()
        parts = key_text.split(".")
        if not sep or not all(WORD.fullmatch(p) for p in parts):
            raise ConfigError(
                f"bad override {show(text)}: expected key=value with a dotted key, e.g. detector.conf=0.4",
                source=origin,
            )
        try:
            value = yaml.load(value_text, Loader=_StrictLoader)
        except (yaml.YAMLError, RecursionError) as err:
            raise ConfigError(
                f"cannot parse the value as YAML{_yaml_problem(err)}", key=key_text, source=origin
            ) from None
        blame.append((_set_path(root_cls, root, parts, value, source, origin), key_text))
    return root, blame


def _set_path(cls: type, root: dict[Any, Any], parts: list[str], value: Any, source: str, origin: str) -> str:
    """Set ``parts`` to ``value`` in ``root`` (mutating copies it makes itself); return the internal key."""
    node = root
    internal = ""
    i = 0
    while True:
        part = parts[i]
        typed = ".".join(parts[: i + 1])
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(f"unknown key (valid: {', '.join(fields)})", key=typed, source=origin)
        tp = _strip_optional(_hints(cls)[part])
        internal = _join(internal, part)
        rest = parts[i + 1 :]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not rest:
                raise ConfigError(
                    f"is a section: set one of its keys, e.g. {typed}.<key>=...", key=typed, source=origin
                )
            node = _child_mapping(node, part, internal, source)
            cls, i = tp, i + 1
            continue
        if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            item_cls = typing.get_args(tp)[0]
            if not rest:  # the whole list, e.g. stages=[{name: a, epochs: 1}]; its paths resolve against cwd
                node[part] = _Override(value, Path.cwd())
                return internal
            seq = node.get(part)
            if seq is None:
                seq = []
            if not isinstance(seq, list | tuple):
                raise ConfigError(f"expected a list, got {show(seq)}", key=internal, source=source)
            seq = list(seq)
            node[part] = seq
            index = _find_item(seq, rest[0], item_cls, ".".join(parts[: i + 2]), origin)
            internal = _join(internal, index)
            item = seq[index]
            if not isinstance(item, Mapping):
                raise ConfigError(f"expected a mapping, got {show(item)}", key=internal, source=source)
            node = seq[index] = dict(item)
            if len(rest) == 1:
                typed = ".".join(parts[: i + 2])
                raise ConfigError(
                    f"is a section: set one of its keys, e.g. {typed}.<key>=...", key=typed, source=origin
                )
            cls, i = item_cls, i + 2
            continue
        if typing.get_origin(tp) is dict:  # free-form (tracker.params): set the whole mapping or a key inside
            for sub in rest:
                node = _child_mapping(node, part, internal, source)
                part, internal = sub, _join(internal, sub)
            node[part] = value
            return internal
        if rest:
            raise ConfigError(
                f"{part} is a value, not a section", key=".".join(parts[: i + 2]), source=origin
            )
        node[part] = _Override(value, Path.cwd()) if "path" in fields[part].metadata else value
        return internal


def _child_mapping(node: dict[Any, Any], part: str, key: str, source: str) -> dict[Any, Any]:
    child = node.get(part)
    if child is None:
        child = {}
    if not isinstance(child, Mapping):
        raise ConfigError(f"expected a mapping, got {show(child)}", key=key, source=source)
    node[part] = dict(child)
    return node[part]


def _find_item(seq: list[Any], selector: str, item_cls: type, typed: str, origin: str) -> int:
    by = getattr(item_cls, "override_key", None)
    if by is not None:  # e.g. cameras are addressed by id
        for index, item in enumerate(seq):
            if isinstance(item, Mapping) and item.get(by) == selector:
                return index
        ids = [item.get(by) for item in seq if isinstance(item, Mapping)]
        valid = ", ".join(i for i in ids if isinstance(i, str)) or "none"
        what = typed.rpartition(".")[0].rpartition(".")[2]  # "cameras" -> "no camera with id ..."
        raise ConfigError(
            f"no {what.removesuffix('s')} with {by} {selector!r} ({what}: {valid})", key=typed, source=origin
        )
    if selector.isascii() and selector.isdigit() and int(selector) < len(seq):
        return int(selector)
    raise ConfigError(
        f"no item {selector!r}: items are numbered from 0, the list has {len(seq)}", key=typed, source=origin
    )


# ----------------------------------------------------------------------------------------------------
# Loading


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (same safety) that also rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            k = self.construct_object(key_node, deep=True)
            try:
                duplicate = k in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {show(k)}",
                    key_node.start_mark,
                )
            seen.add(k)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: BaseException) -> str:
    """Where and what, without the snippet of the offending line that PyYAML adds (it may hold a password)."""
    if isinstance(err, RecursionError):
        return ": nested too deeply"
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "reason", None) or "invalid YAML"
    if mark is not None:
        return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    position = getattr(err, "position", None)
    return f": {problem}" + (f" (character {position + 1})" if isinstance(position, int) else "")


def _load(
    cls: type[C], raw: Any, overrides: Sequence[str], *, base_dir: Path, source: str, env: Mapping[str, str]
) -> C:
    if raw is None:
        required = [f.name for f in dataclasses.fields(cls) if _is_required(f)]
        if required:
            raise ConfigError(
                f"the configuration is empty (it needs at least: {', '.join(required)})", source=source
            )
        raw = {}
    if not isinstance(raw, Mapping):
        names = ", ".join(f"{f.name}:" for f in dataclasses.fields(cls)[:2])
        raise ConfigError(
            f"the top level must be a mapping of sections ({names} ...), got {show(raw)}", source=source
        )
    merged, blame = _merge_overrides(cls, raw, overrides, source)
    try:
        return _build_section(cls, merged, "", _Ctx(base_dir=base_dir, env=env))
    except ConfigError as err:
        for internal, typed in reversed(blame):
            if err.key == internal or err.key.startswith((internal + ".", internal + "[")):
                origin = f"{source} (--set)" if source else "--set"
                raise ConfigError(err.detail, key=typed + err.key[len(internal) :], source=origin) from None
        raise ConfigError(err.detail, key=err.key, source=source) from None


def load_yaml(cls: type[C], path: str | Path, overrides: Sequence[str] = ()) -> C:
    """Read and validate a YAML file into the schema ``cls``, then apply ``--set`` overrides
    (``"detector.conf=0.4"``; values are parsed as YAML). Relative paths resolve against the file's folder.

    Raises ConfigError (one line, naming the file and the key) for a missing or unreadable file, a YAML syntax
    error (with its line), and any invalid value or override; no other exception escapes for bad input.
    """
    path = Path(path)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=name) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML file", source=name) from None
    except UnicodeDecodeError:
        raise ConfigError("is not UTF-8 text", source=name) from None
    except OSError as err:
        raise ConfigError(
            f"cannot read the file: {err.strerror or type(err).__name__}", source=name
        ) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except (yaml.YAMLError, RecursionError) as err:
        raise ConfigError(f"YAML syntax error{_yaml_problem(err)}", source=name) from None
    return _load(cls, raw, overrides, base_dir=path.absolute().parent, source=name, env=os.environ)


def from_mapping(
    cls: type[C],
    data: Any,
    overrides: Sequence[str] = (),
    *,
    base_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> C:
    """Validate an already-parsed mapping (as ``yaml.safe_load`` returns it) into the schema ``cls``.

    Relative paths resolve against ``base_dir`` (default: the working directory); ``${NAME}`` uses ``env``
    (default: ``os.environ``). ``source`` names the input in error messages. Raises ConfigError only.
    """
    base = Path(base_dir).absolute() if base_dir is not None else Path.cwd()
    return _load(cls, data, overrides, base_dir=base, source=source, env=os.environ if env is None else env)


def with_overrides(cfg: C, overrides: Sequence[str]) -> C:
    """Return ``cfg`` with ``key=value`` overrides applied and the result validated again.

    Relative paths in override values resolve against the working directory; ``${NAME}`` in them is
    substituted. Raises ConfigError whose source is ``--set``.
    """
    if not overrides:
        return cfg
    raw = to_plain(cfg, for_log=False)
    return _load(type(cfg), raw, overrides, base_dir=Path.cwd(), source="", env=os.environ)


def to_plain(obj: Any, *, for_log: bool) -> Any:
    """Plain data (dicts, lists, str, numbers, None) of a config. ``for_log=True``: secret fields redacted
    and times as ISO 8601 strings (not reloadable when there were secrets); ``False``: reloadable by
    :func:`from_mapping` to the same config (``$`` in ``env`` fields is escaped as ``$$``)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, str) and for_log and f.metadata.get("secret"):
                value = redact_url(value)
            elif isinstance(value, str) and not for_log and f.metadata.get("env"):
                value = value.replace("$", "$$")  # already substituted: keep it literal when reloaded
            out[f.name] = to_plain(value, for_log=for_log)
        return out
    if isinstance(obj, list | tuple):
        return [to_plain(v, for_log=for_log) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v, for_log=for_log) for k, v in obj.items()}
    if for_log and isinstance(obj, dt.date):
        return obj.isoformat()
    return obj
