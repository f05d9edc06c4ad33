"""One training run: config, recipes, the trainer, distributed setup.

``focalexp.train.config`` is torch-free (a sweep resolves thousands of run configs with it); the
trainer's names (``Trainer``, ``train``, ``read_metrics``) load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import RECIPES, RunConfig, load_run_config, resolve_run_config

__all__ = ["RECIPES", "RunConfig", "Trainer", "load_run_config", "read_metrics", "resolve_run_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("Trainer", "read_metrics", "train"):
        return getattr(importlib.import_module(".loop", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
