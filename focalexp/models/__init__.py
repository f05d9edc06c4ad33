"""Models: the config, the FocalNet class, presets, checkpoint conversion, timm registration."""

from .checkpoint import load_checkpoint, save_model
from .config import FocalNetConfig
from .factory import create_model, resolve_config
from .focalnet import FocalNet
from .presets import PaperRow, Preset, get_preset, list_models, list_presets
from .timm_registry import register_all as _register_timm

_register_timm()

__all__ = [
    "FocalNetConfig", "FocalNet", "Preset", "PaperRow", "create_model", "resolve_config", "get_preset",
    "list_models", "list_presets", "load_checkpoint", "save_model",
]
