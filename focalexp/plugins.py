"""One mechanism behind focalexp's extension registries (tasks, launcher backends): objects registered
by name, built-in ones named without importing them, and third-party ones found through a Python
entry-point group (an installed package is the act of trust; a spec never names code to import)."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Plugins(Generic[T]):
    """``name -> instance of base``. ``builtin`` maps names to ``"module:Class"``, imported on first
    lookup; ``group`` is the entry-point group; ``key`` names the config key in error messages;
    ``check_name`` validates a registered object's name (raises ValueError)."""

    def __init__(self, base: type, group: str, key: str, builtin: dict[str, str],
                 check_name: Callable[[str], None]):
        self.base, self.group, self.key, self.builtin, self.check_name = base, group, key, dict(builtin), check_name
        self.registered: dict[str, T] = {}

    def register(self, obj: Any) -> T:
        """Add ``obj`` (an instance or a class of ``base``) under its ``name``; returns the instance."""
        inst = obj() if isinstance(obj, type) else obj
        if not isinstance(inst, self.base):
            raise TypeError(f"{inst!r} is not a {self.base.__module__}.{self.base.__name__}")
        self.check_name(inst.name)
        self.registered[inst.name] = inst
        return inst

    def entry_points(self) -> dict[str, Any]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Built in, registered, and installed through entry points (a broken distribution's metadata
        never hides the others)."""
        names = dict.fromkeys([*self.builtin, *self.registered])
        try:
            names.update(dict.fromkeys(self.entry_points()))
        except Exception:  # noqa: BLE001
            pass
        return list(names)

    def find(self, name: str, register: Callable[[Any], Any] | None = None) -> T | None:
        """The object named ``name``, or None. ``register``: the registry's own register function (its
        extra checks), used for built-in and entry-point objects on first lookup."""
        register = register or self.register
        if name in self.registered:
            return self.registered[name]
        if name in self.builtin:
            module, _, attr = self.builtin[name].partition(":")
            register(getattr(importlib.import_module(module), attr)())
            return self.registered[name]
        try:
            eps = self.entry_points()
        except Exception:  # noqa: BLE001 - see names()
            return None
        if name not in eps:
            return None
        obj = eps[name].load()
        inst = obj() if isinstance(obj, type) else obj
        if not isinstance(inst, self.base) or inst.name != name:
            raise ConfigError(f"{self.key}: entry point '{name}' ({eps[name].value}) is not a focalexp "
                              f"{self.base.__name__} named '{name}'")
        register(inst)
        return self.registered[name]
