"""Register every focalexp preset in timm under the ``focalexp_`` prefix.

After ``import focalexp``, ``timm.create_model("focalexp_focalnet_t_srf", num_classes=10)`` builds our
model, so timm's training and benchmark scripts, ``timm.data.resolve_data_config`` and
``features_only=True`` work with every preset and ablation. Keyword arguments are
:class:`~focalexp.models.config.FocalNetConfig` fields, plus timm's usual ones:
``proj_drop_rate`` (our ``drop_rate``), ``drop_path_rate``, ``num_classes``, ``in_chans``,
``features_only`` and ``out_indices``.
"""

from __future__ import annotations

import sys
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model

from ..errors import ConfigError
from .presets import list_presets

PREFIX = "focalexp_"

default_cfgs: dict[str, dict[str, Any]] = {}
_REGISTERED: list[str] = []


def _cfg(img_size: int, num_classes: int) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": (3, img_size, img_size),
        "pool_size": (img_size // 32, img_size // 32),
        "crop_pct": 0.875 if img_size == 224 else 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj",
        "classifier": "head",
        "license": "mit",
    }


def _entrypoint(preset_name: str):
    def fn(pretrained: bool = False, **kwargs: Any):
        from .factory import create_model

        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        if "proj_drop_rate" in kwargs:
            kwargs["drop_rate"] = kwargs.pop("proj_drop_rate")
        elif kwargs.get("drop_rate"):
            raise ConfigError(
                "drop_rate: timm's drop_rate is a classifier dropout, which FocalNet has not; "
                "use proj_drop_rate (the official drop_rate)"
            )
        else:
            kwargs.pop("drop_rate", None)
        if kwargs.pop("global_pool", "avg") not in ("avg", ""):
            raise ConfigError("global_pool: FocalNet pools by average only")
        features_only = bool(kwargs.pop("features_only", False))
        if "out_indices" in kwargs:
            kwargs["out_indices"] = tuple(kwargs["out_indices"])
        model = create_model(preset_name, pretrained=pretrained, features_only=features_only, **kwargs)
        cfg = _cfg(model.config.img_size, model.config.num_classes)
        model.pretrained_cfg = model.default_cfg = cfg  # what timm.data.resolve_data_config reads
        return model

    fn.__name__ = PREFIX + preset_name
    fn.__qualname__ = fn.__name__
    fn.__module__ = __name__
    fn.__doc__ = f"focalexp preset {preset_name} (see focalexp.get_preset('{preset_name}').doc)."
    return fn


def register_all() -> list[str]:
    """Register every preset in timm (idempotent); returns the registered names."""
    if _REGISTERED:
        return list(_REGISTERED)
    mod = sys.modules[__name__]
    for p in list_presets():
        name = PREFIX + p.name
        default_cfgs[name] = _cfg(p.config.img_size, p.config.num_classes)
        fn = _entrypoint(p.name)
        setattr(mod, name, fn)
        register_model(fn)
        _REGISTERED.append(name)
    return list(_REGISTERED)
