"""Models: the config, the FocalNet class, presets, checkpoint conversion, timm registration.

Importing this package registers every preset in timm as ``focalexp_<preset>``. The torch-free part
(``FocalNetConfig``, the presets, ``resolve_config``, :mod:`focalexp.models.macs`) never needs torch; in a
process that asked for light imports (:func:`focalexp.light_imports`: the CLI's sweep, status, collect
and report, which validate thousands of runs without loading torch) the torch-backed names load, and
register in timm, on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import FocalNetConfig
from .presets import PaperRow, Preset, get_preset, list_models, list_presets, resolve_config

_HEAVY = {"FocalNet": "focalnet", "create_model": "factory", "load_checkpoint": "checkpoint",
          "save_model": "checkpoint"}

__all__ = [
    "FocalNetConfig", "FocalNet", "Preset", "PaperRow", "create_model", "resolve_config", "get_preset",
    "list_models", "list_presets", "load_checkpoint", "save_model",
]


def load_torch_models() -> None:
    """Import the torch-backed modules and register every preset in timm (idempotent)."""
    for module in ("checkpoint", "factory", "focalnet"):
        importlib.import_module(f".{module}", __name__)
    from .timm_registry import register_all

    register_all()


def __getattr__(name: str) -> Any:
    if name in _HEAVY:
        load_torch_models()
        return getattr(importlib.import_module(f".{_HEAVY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _light() -> bool:
    import focalexp

    return focalexp._LIGHT_IMPORTS


if not _light():
    load_torch_models()
