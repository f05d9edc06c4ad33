"""focalexp: build, train, sweep and analyse Focal Modulation Networks (FocalNet)."""

__version__ = "0.1.0"

from .errors import ConfigError, FocalexpError  # noqa: E402
from .models import FocalNet, FocalNetConfig, create_model, get_preset, list_models  # noqa: E402

__all__ = ["FocalNet", "FocalNetConfig", "create_model", "get_preset", "list_models", "ConfigError", "FocalexpError"]
