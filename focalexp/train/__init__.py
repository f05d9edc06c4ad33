"""One training run: config, recipes, the trainer, distributed setup, the submitit task."""

from .config import RECIPES, RunConfig, load_run_config, resolve_run_config
from .loop import Trainer, read_metrics, train

__all__ = ["RECIPES", "RunConfig", "Trainer", "load_run_config", "read_metrics", "resolve_run_config", "train"]
