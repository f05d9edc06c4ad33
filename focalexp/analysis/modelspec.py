"""Moved: the model-name resolver lives in :mod:`focalexp.models.resolve`; these names stay importable
from here for code that imported them (``focalexp.analysis.images`` and older scripts)."""

from ..models.resolve import (  # noqa: F401
    MAX_IMG_SIZE,
    NOT_KNOBS,
    ModelSpec,
    img_size_override,
    resolve_model_spec,
    timm_model_name,
    unknown_model_message,
)

__all__ = ["MAX_IMG_SIZE", "NOT_KNOBS", "ModelSpec", "img_size_override", "resolve_model_spec", "timm_model_name",
           "unknown_model_message"]
