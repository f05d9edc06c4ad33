"""focalexp: build, train, sweep and analyse Focal Modulation Networks (FocalNet).

The top-level names load lazily, so the command line starts fast; ``import focalexp.models`` (or the
first use of any model name below) also registers every preset in timm as ``focalexp_<preset>``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_LIGHT_IMPORTS = False


def light_imports() -> None:
    """Let ``import focalexp.models`` skip torch until a torch-backed name is used (the CLI's sweep engine
    validates and estimates thousands of runs without torch). Library users need not call this."""
    global _LIGHT_IMPORTS
    _LIGHT_IMPORTS = True

_LAZY = {
    "FocalNet": "focalexp.models",
    "FocalNetConfig": "focalexp.models",
    "create_model": "focalexp.models",
    "get_preset": "focalexp.models",
    "list_models": "focalexp.models",
    "load_checkpoint": "focalexp.models",
    "save_model": "focalexp.models",
    "FocalexpError": "focalexp.errors",
    "ConfigError": "focalexp.errors",
}

__all__ = sorted(_LAZY) + ["light_imports"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'focalexp' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
