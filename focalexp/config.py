"""Configs: safe YAML, typed sections, ``--set`` overrides, hashes. One module for the one concern.

* :func:`load_yaml` / :func:`parse_yaml`: PyYAML's safe loader made strict (duplicate keys, size limits),
  every problem one line with the file, line and column.
* :func:`build`: a mapping -> a typed section (a dataclass), checking keys, types, choices and bounds.
* :func:`parse_set_args` / :func:`apply_overrides`: ``--set a.b=value`` on the command line.
* :func:`to_plain`, :func:`content_hash`, :func:`deep_merge`, :func:`opt`.

A section is a dataclass whose fields may carry ``metadata``: ``help`` (text), ``choices`` (allowed
values), ``min`` / ``max`` (inclusive bounds). :func:`build` turns a mapping into the dataclass and
raises :class:`~focalexp.errors.ConfigError` with one line naming the dotted key (``train.lr: ...``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError, closest, did_you_mean

__all__ = ["YamlLoader", "MAX_YAML_BYTES", "MAX_YAML_VALUES", "parse_yaml", "load_yaml", "build", "to_plain",
           "content_hash", "deep_merge", "opt", "parse_value", "parse_set_args", "set_dotted", "apply_overrides"]


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data only: no tags that build objects), made strict and modern:

    * a key given twice in one mapping is an error (PyYAML keeps the last one silently); keys that a
      ``<<: *anchor`` merge brings in may still be overridden, as YAML intends;
    * ``1e-3`` and ``5E4`` are numbers, as in YAML 1.2 and as researchers write them (YAML 1.1 needs a dot).
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}' (also on line {first.line + 1}; a key may appear once "
                        "per mapping)", key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

MAX_YAML_BYTES = 16 * 2**20
MAX_YAML_VALUES = 1_000_000


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text with :class:`YamlLoader`; every problem is one line naming ``source`` (and the
    line and column where YAML knows them)."""
    try:
        data = yaml.load(text, Loader=YamlLoader)  # noqa: S506 - YamlLoader is a SafeLoader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        what = " ".join(str(e.problem or e.context or "syntax error").split())
        raise ConfigError(f"{where}: malformed YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: malformed YAML: {' '.join(str(e).split())[:200]}") from None
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML: nested too deeply") from None
    _check_size(data, source)
    return data


def _check_size(data: Any, source: str) -> None:
    """Refuse documents that refer to themselves, or whose aliases expand to more than
    :data:`MAX_YAML_VALUES` values (a few lines of nested anchors can stand for billions)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(x: Any) -> int:
        if not isinstance(x, (list, dict)):
            return 1
        k = id(x)
        if k in sizes:
            return sizes[k]
        if k in active:
            raise ConfigError(f"{source}: malformed YAML: an anchor refers to itself (a recursive structure)")
        active.add(k)
        items = list(x.items()) if isinstance(x, dict) else [(None, v) for v in x]
        n = 1
        for key, v in items:
            n += size(v) + (key is not None)
            if n > MAX_YAML_VALUES:
                raise ConfigError(f"{source}: YAML expands to more than {MAX_YAML_VALUES:,} values "
                                  "(aliases of aliases?); refused")
        active.discard(k)
        sizes[k] = n
        return n

    try:
        size(data)
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML: nested too deeply") from None


def load_yaml(path: str | Path, what: str = "config") -> Any:
    """Safe-load a YAML file (see :func:`parse_yaml`); a missing file, a directory, a binary file or a
    syntax error is one line with the file (and line and column)."""
    from .fileio import input_file

    p = input_file(path, what)
    if p.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{what}: '{p}' is {p.stat().st_size / 2**20:.0f} MB; a YAML {what} is a small text "
                          f"file (at most {MAX_YAML_BYTES // 2**20} MB)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: '{p}' is not a text file (binary data at byte "
                          f"{_first_bad_byte(raw)}); expected YAML") from None
    if "\x00" in text:
        raise ConfigError(f"{what}: '{p}' is not a text file (it holds NUL bytes); expected YAML")
    return parse_yaml(text, str(p))


def _first_bad_byte(raw: bytes) -> int:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return 0


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class (resolving them is slow; classes do not change)."""
    return typing.get_type_hints(cls)


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(v), type(v).__name__)


def _check(key: str, tp: Any, v: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        first: ConfigError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(key, a, v)
            except ConfigError as e:
                first = first or e
        raise first or ConfigError(f"unexpected value {v!r}", key=key)
    if tp is Any:
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"expected true or false, got {v!r} ({_type_name(v)})", key=key)
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"expected an integer, got {v!r} ({_type_name(v)})", key=key)
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"expected a number, got {v!r} ({_type_name(v)})", key=key)
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"expected a string, got {v!r} ({_type_name(v)})", key=key)
        return v
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"expected a list, got {v!r} ({_type_name(v)})", key=key)
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_check(f"{key}[{i}]", inner, x) for i, x in enumerate(v)]
    if origin is dict or tp is dict:
        if not isinstance(v, Mapping):
            raise ConfigError(f"expected a mapping, got {v!r} ({_type_name(v)})", key=key)
        return dict(v)
    if dataclasses.is_dataclass(tp):
        return build(tp, v, key)
    return v


def build(cls: type, data: Mapping[str, Any] | None, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking keys, types, choices and bounds. Errors carry
    the dotted key (``prefix`` + field; ``e.key``); an unknown key carries the closest valid one."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of keys, got {data!r} ({_type_name(data)})", key=prefix or "config")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    dot = f"{prefix}." if prefix else ""
    for k in data:
        if k not in fields:
            hits = closest(str(k), list(fields), n=1)
            raise ConfigError(key=f"{dot}{k}", unknown=True, suggestion=f"{dot}{hits[0]}" if hits else None)
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = dot + name
        v = _check(key, hints[name], data[name])
        meta = f.metadata
        if "choices" in meta and v not in meta["choices"]:
            raise ConfigError(f"unknown value {v!r}{did_you_mean(str(v), [str(c) for c in meta['choices']])}; "
                              f"allowed: {', '.join(str(c) for c in meta['choices'])}", key=key)
        if "min" in meta and v is not None and v < meta["min"]:
            raise ConfigError(f"expected >= {meta['min']}, got {v}", key=key)
        if "max" in meta and v is not None and v > meta["max"]:
            raise ConfigError(f"expected <= {meta['max']}, got {v}", key=key)
        kwargs[name] = v
    return cls(**kwargs)


def to_plain(obj: Any) -> Any:
    """Dataclasses/tuples -> dicts/lists, for YAML and JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def content_hash(obj: Any, n: int = 12) -> str:
    """A short, stable hash of a plain config (sorted-key JSON)."""
    text = json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: mappings merge recursively, everything else replaces."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def opt(default: Any, help: str = "", **meta: Any) -> Any:  # noqa: A002 - "help" reads best at call sites
    """A dataclass field with a default and metadata (help, choices, min, max)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


# ---------------------------------------------------------------------------- --set overrides

def parse_value(text: str) -> Any:
    """A YAML scalar/list/dict (``3``, ``1e-3``, ``true``, ``[3, 5]``, ``sigmoid``); plain text otherwise."""
    if not text.strip():
        return ""
    try:
        return parse_yaml(text, "--set")
    except ConfigError:
        return text


def parse_set_args(items: Iterable[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[3,5]"]`` -> ``{"a.b": 1, "c": [3, 5]}``; a malformed item names itself."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set: expected key=value, got '{item}'")
        out[key] = parse_value(value)
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key="a.b"``, creating inner dicts."""
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"'{p}' is a value, not a section", key=f"--set {key}")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(d: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``d`` with dotted ``overrides`` applied."""
    out = copy.deepcopy(dict(d))
    for k, v in overrides.items():
        set_dotted(out, k, v)
    return out
