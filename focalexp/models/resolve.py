"""One resolver for a model named by a user: a focalexp preset or alias (with config overrides) or any timm model.

:func:`resolve_model_spec` is what ``focalexp flops``, ``bench`` and ``viz`` (and the analysis scripts)
call with a ``--model`` and its ``--set`` overrides; it returns a :class:`ModelSpec` that knows its label,
its resolved :class:`FocalNetConfig` (``None`` for timm models), the preset it came from, and how to
build itself. Presets win over timm names; ``timm:NAME`` forces a timm model. Unknown names raise
:class:`~focalexp.errors.UnknownNameError` naming the closest presets (or timm models when no preset is
close). Builders that take a name and nothing else (``create_model``) use
:func:`focalexp.models.presets.canonical_name` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ..errors import ConfigError, UnknownNameError, closest, did_you_mean
from .config import FocalNetConfig
from .footprint import MAX_PARAMS, check_size_cap, too_large
from .presets import canonical_name, list_presets, resolve_config

if TYPE_CHECKING:  # resolving a name needs no torch; building the model does
    import torch.nn as nn

# knobs that would fetch or read files, not shape the model: weights load through --checkpoint (the allowlist)
NOT_KNOBS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "checkpoint_path",
             "cache_dir", "features_only", "scriptable", "exportable", "no_jit")
MAX_IMG_SIZE = 4096


@dataclass
class ModelSpec:
    label: str
    config: FocalNetConfig | None  # None for timm models
    timm_name: str | None = None
    timm_kwargs: dict | None = None
    preset: str | None = None  # the preset's canonical name (None for timm models)

    @property
    def img_size(self) -> int:
        if self.config is not None:
            return self.config.img_size
        import timm

        cfg = timm.get_pretrained_cfg(self.timm_name, allow_unregistered=True)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        return size[-1] if size else 224

    @property
    def in_chans(self) -> int:
        return self.config.in_chans if self.config is not None else 3

    def build(self, *, counting: bool = False) -> nn.Module:
        """The model; ``counting=True`` skips weight init (zero weights, for FLOP counting)."""
        if self.config is not None:
            from .focalnet import FocalNet, model_for_counting

            return model_for_counting(self.config) if counting else FocalNet(self.config)
        import timm

        try:
            if self.timm_kwargs:  # knobs can make any size: count it on the meta device (no memory) first
                import torch

                with torch.device("meta"):
                    params = sum(p.numel() for p in timm.create_model(self.timm_name, **self.timm_kwargs).parameters())
                if params > MAX_PARAMS:
                    raise too_large(params, "--set")
            return timm.create_model(self.timm_name, pretrained=False, **(self.timm_kwargs or {}))
        except TypeError as e:
            bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if bad is None:
                raise
            key = bad.group(1)
            raise ConfigError(f"--set {key}: not a knob of timm model '{self.timm_name}'"
                              f"{did_you_mean(key, _timm_knobs(self.timm_name))}") from None


def _timm_knobs(name: str) -> set[str]:
    """The keyword arguments the classes of a timm model's module take (for "did you mean")."""
    import inspect
    import sys

    import timm
    import torch.nn as nn

    try:
        fn = timm.models.model_entrypoint(name)
        mod = sys.modules[fn.__module__]
    except Exception:  # noqa: BLE001 - suggestions only
        return set()
    out: set[str] = set()
    for obj in vars(mod).values():
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == mod.__name__:
            try:
                out.update(p for p in inspect.signature(obj.__init__).parameters if p not in ("self", "args", "kwargs"))
            except (TypeError, ValueError):
                continue
    return out


def _check_timm_knobs(name: str, kwargs: Mapping[str, Any]) -> None:
    for k in kwargs:
        if k in NOT_KNOBS or k.startswith("pretrained"):
            raise ConfigError(f"--set {k}: not a model knob (it fetches or reads weights); load weights with "
                              "--checkpoint, which reads them through focalexp's allowlist")
    if "img_size" in kwargs and not (isinstance(kwargs["img_size"], int) and 1 <= kwargs["img_size"] <= MAX_IMG_SIZE):
        raise ConfigError(f"--set img_size: expected a size from 1 to {MAX_IMG_SIZE}, got {kwargs['img_size']!r}")


def unknown_model_message(name: str) -> str:
    """One line for a name that is neither a preset nor a timm model: the closest presets, else timm names."""
    import timm

    names = [n for p in list_presets() for n in (p.name, *p.aliases)]
    hits = closest(name, names, n=3) or closest(name, timm.list_models(), n=3)
    hint = f"; closest: {', '.join(hits)}" if hits else ""
    return f"unknown model '{name}'{hint} (see `focalexp models`; timm model names work too)"


def timm_model_name(name: str) -> str:
    """``name`` as a timm model (``timm:`` prefix dropped; a pretrained tag ``.tag`` allowed), or
    :class:`~focalexp.errors.UnknownNameError` with :func:`unknown_model_message`."""
    import timm

    if name.startswith("timm:"):
        name = name[5:]
    if not timm.is_model(name.split(".")[0]):
        raise UnknownNameError(unknown_model_message(name))
    return name


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
    except UnknownNameError:
        name = timm_model_name(name)
        _check_timm_knobs(name, overrides)
        return ModelSpec(label=name, config=None, timm_name=name, timm_kwargs=dict(overrides))
    cfg = resolve_config(preset, **overrides)
    check_size_cap({"preset": preset, **overrides}, prefix="--set ")
    label = preset if not overrides else f"{preset} ({', '.join(f'{k}={v}' for k, v in overrides.items())})"
    return ModelSpec(label=label, config=cfg, preset=preset)


def img_size_override(spec: ModelSpec, img_size: int | None) -> int:
    """The resolution to measure at; a FocalNet checks it against its stride."""
    size = spec.img_size if img_size is None else img_size
    if spec.config is not None and img_size is not None:
        stride = spec.config.stride
        if size % stride and not spec.config.pad_input:
            raise ConfigError(f"--img-size: {size} is not a multiple of the network stride {stride}")
    if not 1 <= size <= MAX_IMG_SIZE:
        raise ConfigError(f"--img-size: expected a size from 1 to at most {MAX_IMG_SIZE}, got {size}")
    return size
