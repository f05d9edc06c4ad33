"""`--set key=value` overrides: parsing and applying dotted keys to nested dicts."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .errors import ConfigError


def parse_value(text: str) -> Any:
    """A YAML scalar/list/dict (``3``, ``1e-3``, ``true``, ``[3, 5]``, ``sigmoid``); plain text otherwise."""
    from .configtools import parse_yaml

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
            raise ConfigError(f"--set {key}: '{p}' is a value, not a section")
        cur = nxt
    cur[parts[-1]] = value


def apply_overrides(d: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``d`` with dotted ``overrides`` applied."""
    import copy

    out = copy.deepcopy(dict(d))
    for k, v in overrides.items():
        set_dotted(out, k, v)
    return out
