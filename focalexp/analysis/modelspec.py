"""Resolve a model named on the command line: a focalexp preset (with overrides) or any timm model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn as nn

from ..errors import ConfigError, UnknownNameError
from ..models.config import FocalNetConfig
from ..models.factory import resolve_config
from ..models.focalnet import FocalNet
from ..models.presets import canonical_name


@dataclass
class ModelSpec:
    label: str
    config: FocalNetConfig | None  # None for timm models
    timm_name: str | None = None
    timm_kwargs: dict | None = None

    @property
    def img_size(self) -> int:
        if self.config is not None:
            return self.config.img_size
        import timm

        cfg = timm.get_pretrained_cfg(self.timm_name, allow_unregistered=True)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        return size[-1] if size else 224

    def build(self, *, counting: bool = False) -> nn.Module:
        """The model; ``counting=True`` skips weight init (zero weights, for FLOP counting)."""
        if self.config is not None:
            if counting:
                from .flops import model_for_counting

                return model_for_counting(self.config)
            return FocalNet(self.config)
        import timm

        return timm.create_model(self.timm_name, pretrained=False, **(self.timm_kwargs or {}))


def _strip_model_prefix(overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in overrides.items():
        out[k[len("model."):] if k.startswith("model.") else k] = v
    return out


def resolve_model_spec(name: str, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """A preset/alias (overrides are FocalNetConfig fields) or a timm model name (overrides are kwargs)."""
    overrides = _strip_model_prefix(overrides or {})
    try:
        preset = canonical_name(name)
    except UnknownNameError as err:
        import timm

        if name.startswith("timm:"):
            name = name[5:]
        if not timm.is_model(name.split(".")[0]):
            raise UnknownNameError(str(err).replace("(see `focalexp models`)", "(see `focalexp models`; timm model names work too)")) from None
        return ModelSpec(label=name, config=None, timm_name=name, timm_kwargs=dict(overrides))
    cfg = resolve_config(preset, **overrides)
    label = preset if not overrides else f"{preset} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"
    return ModelSpec(label=label, config=cfg)


def img_size_override(spec: ModelSpec, img_size: int | None) -> int:
    """The resolution to measure at; a FocalNet checks it against its stride."""
    size = spec.img_size if img_size is None else img_size
    if spec.config is not None and img_size is not None:
        stride = spec.config.stride
        if size % stride and not spec.config.pad_input:
            raise ConfigError(f"--img-size: {size} is not a multiple of the network stride {stride}")
    if size < 1:
        raise ConfigError(f"--img-size: expected a positive size, got {size}")
    return size
