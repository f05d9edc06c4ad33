"""Register every focalexp preset in timm under the ``focalexp_`` prefix.

After ``import focalexp``, ``timm.create_model("focalexp_focalnet_t_srf", num_classes=10)`` builds our
model through timm's ``build_model_with_cfg``, so timm's training and benchmark scripts,
``timm.data.resolve_data_config`` and its feature wrappers work with every preset and ablation:
``features_only=True`` with ``out_indices`` and ``feature_cls`` (``'getter'``, the default, over
:meth:`FocalNet.forward_intermediates`; ``'hook'``; ``'fx'``; ``'list'``/``'dict'`` for hierarchical
models) returns timm's wrapper, whose ``feature_info`` is timm's :class:`~timm.models.FeatureInfo`.

Keyword arguments are :class:`~focalexp.models.config.FocalNetConfig` fields, plus timm's usual ones:
``proj_drop_rate`` (our ``drop_rate``), ``drop_path_rate``, ``num_classes``, ``in_chans``,
``global_pool`` (``'avg'`` or ``''``), ``output_stride`` (the network's own stride only: FocalNet has no
dilated stages), ``features_only``, ``out_indices`` and ``feature_cls``.
"""

from __future__ import annotations

import sys
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model

from ..errors import ConfigError
from .config import FocalNetConfig
from .presets import list_presets, resolve_config

PREFIX = "focalexp_"

default_cfgs: dict[str, dict[str, Any]] = {}
_REGISTERED: list[str] = []

# timm's arguments that shape the wrapper or the weights, not the FocalNet
_FEATURE_KEYS = ("features_only", "out_indices", "feature_cls")
_DROPPED = ("cache_dir", "pretrained_strict", "pretrained_model_args")  # weights load through focalexp


def pool_size(cfg: FocalNetConfig) -> tuple[int, int]:
    """Size of the final feature map at ``cfg.img_size`` (the input zero-padded to the stride if need be)."""
    n = -(-cfg.img_size // cfg.stride)
    return (n, n)


def _cfg(cfg: FocalNetConfig, hf_hub_id: str | None = None) -> dict[str, Any]:
    """The preset's pretrained cfg, in timm's ``PretrainedCfg`` fields."""
    return {
        "url": "",
        "hf_hub_id": hf_hub_id,
        "num_classes": cfg.num_classes,
        "input_size": (cfg.in_chans, cfg.img_size, cfg.img_size),
        "pool_size": pool_size(cfg),
        "min_input_size": (cfg.in_chans, cfg.stride, cfg.stride),
        "fixed_input_size": False,
        "crop_pct": 0.875 if cfg.img_size == 224 else 1.0,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2203.11926",
        "paper_name": "Focal Modulation Networks",
        "origin_url": "https://github.com/microsoft/FocalNet",
    }


def _timm_kwargs_to_ours(kwargs: dict[str, Any]) -> None:
    if "proj_drop_rate" in kwargs:
        kwargs["drop_rate"] = kwargs.pop("proj_drop_rate")
    elif kwargs.get("drop_rate"):
        raise ConfigError(
            "drop_rate: timm's drop_rate is a classifier dropout, which FocalNet has not; "
            "use proj_drop_rate (the official drop_rate)"
        )
    else:
        kwargs.pop("drop_rate", None)


def create_timm_model(preset_name: str, pretrained: bool = False, **kwargs: Any):
    """What ``timm.create_model(PREFIX + preset_name, ...)`` calls: a FocalNet, or timm's feature wrapper."""
    from .factory import _load_pretrained  # factory imports this module's package: import late
    from .focalnet import FocalNet

    variant = PREFIX + preset_name
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    for k in _DROPPED:
        kwargs.pop(k, None)
    timm_args = {k: kwargs.pop(k) for k in _FEATURE_KEYS if k in kwargs}
    features = bool(timm_args.get("features_only", False))
    if not features and "out_indices" in timm_args:  # without features_only: focalexp's backbone mode
        kwargs["out_indices"] = timm_args.pop("out_indices")
    if not features and "feature_cls" in timm_args:
        raise ConfigError("feature_cls: picks timm's feature wrapper; it needs features_only=True")
    global_pool = kwargs.pop("global_pool", None)
    if global_pool is not None and global_pool not in ("avg", ""):
        raise ConfigError(f"global_pool: FocalNet pools by average ('avg') or not at all (''), got {global_pool!r}")
    output_stride = kwargs.pop("output_stride", None)
    _timm_kwargs_to_ours(kwargs)
    if "out_indices" in kwargs:
        kwargs["out_indices"] = tuple(kwargs["out_indices"])
    cfg = resolve_config(preset_name, **kwargs)  # validated once: unknown keys fail here, with a suggestion
    if output_stride is not None and output_stride != cfg.stride:
        raise ConfigError(f"output_stride: FocalNet has no dilated stages; its output stride is {cfg.stride}, "
                          f"got {output_stride}")

    def build(**timm_kwargs: Any) -> FocalNet:
        # timm hands back num_classes / in_chans (ours, as given) and nothing else
        model = FocalNet(cfg.replace(**{k: v for k, v in timm_kwargs.items() if getattr(cfg, k) != v}))
        if pretrained:
            _load_pretrained(model, preset_name)
        if global_pool is not None:
            model.global_pool = global_pool
        return model

    isotropic = len(cfg.depths) == 1
    levels = cfg.depths[0] if isotropic else len(cfg.depths)
    feature_cfg: dict[str, Any] = dict(feature_cls="getter", out_indices=tuple(range(levels)))
    if features and str(timm_args.get("feature_cls", "")).lower() in ("list", "dict"):
        # timm runs the model's top-level modules in turn and takes the outputs of stages.{i}
        if isotropic:
            raise ConfigError("feature_cls: 'list'/'dict' take whole stages; an isotropic model's feature levels "
                              "are its blocks: use 'getter' (default), 'hook' or 'fx'")
        feature_cfg["flatten_sequential"] = True
    model = build_model_with_cfg(
        build,
        variant,
        pretrained=False,  # weights: focalexp's own loader (timm layout -> ours), in build()
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        feature_cfg=feature_cfg,
        num_classes=cfg.num_classes,
        in_chans=cfg.in_chans,
        **timm_args,
    )
    data = {"input_size": (cfg.in_chans, cfg.img_size, cfg.img_size),
            "min_input_size": (cfg.in_chans, cfg.stride, cfg.stride)}
    if not features:
        data.update(num_classes=cfg.num_classes, pool_size=pool_size(cfg))
    model.pretrained_cfg.update(data)  # what timm.data.resolve_data_config reads: this model's, not the preset's
    model.default_cfg = model.pretrained_cfg
    return model


def _entrypoint(preset_name: str):
    def fn(pretrained: bool = False, **kwargs: Any):
        return create_timm_model(preset_name, pretrained=pretrained, **kwargs)

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
        hub = f"timm/{p.timm_name}.{p.timm_tag}" if p.timm_name and p.timm_tag else None
        default_cfgs[name] = _cfg(p.config, hub)
        fn = _entrypoint(p.name)
        setattr(mod, name, fn)
        register_model(fn)
        _REGISTERED.append(name)
    return list(_REGISTERED)


__all__ = ["PREFIX", "create_timm_model", "default_cfgs", "pool_size", "register_all"]
