"""Weight layouts: how focalexp, official, timm and Hugging Face checkpoints name and shape a FocalNet's tensors.

One :class:`WeightLayout` per layout, in a registry: how to recognise it from the keys, how each of its keys
renames to focalexp's and back, which weights it stores as 1x1 convolutions ``(out, in, 1, 1)`` where
focalexp keeps a Linear ``(out, in)``, and which configs it cannot express. Reading
(:func:`focalexp.models.checkpoint.convert_state_dict`) and writing (:mod:`focalexp.models.export`) both
go through it, so a layout is described once.

``focalexp``  ``stem``, ``stages.{i}.downsample`` (start of stage ``i``), ``stages.{i}.blocks.{j}.{norm1,
              modulation.{f,focal_layers,h,norm,proj}, ls1.gamma, norm2, mlp.fc{1,2}, ls2.gamma}``, ``norm``, ``head``.
``official``  microsoft/FocalNet: ``patch_embed``, ``layers.{i}.blocks.{j}``, ``layers.{i}.downsample`` at the
              *end* of stage ``i``, ``gamma_1/2``, ``modulation.ln``, ``h`` a 1x1 conv, ``head``.
``timm``      ``stem``, ``layers.{i}.downsample`` at the start of stage ``i``, every projection a 1x1 conv,
              ``ls1/2.gamma``, ``norm{1,2}_post`` in post-norm blocks, ``head.fc``.
``hf``        transformers' ``FocalNetForImageClassification``: ``focalnet.embeddings.patch_embeddings.projection``,
              ``focalnet.embeddings.norm``, ``focalnet.encoder.stages.{i}.layers.{j}.{norm1, modulation.
              {projection_in, focal_layers, projection_context, layernorm, projection_out}, gamma_1, norm2,
              mlp.fc{1,2}, gamma_2}``, ``focalnet.encoder.stages.{i}.downsample.{projection,norm}`` at the *end*
              of stage ``i``, ``focalnet.layernorm``, ``classifier``. The bare ``FocalNetModel`` backbone has
              the same keys without the ``focalnet.`` prefix and no classifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import UnknownNameError, did_you_mean
from .config import FocalNetConfig


@dataclass(frozen=True)
class WeightLayout:
    """One checkpoint layout: detection, renaming both ways, conv-shaped weights, what it cannot express."""

    name: str
    description: str
    detect: Callable[[Sequence[str]], bool]
    to_ours: Callable[[str], str | None]  # None: a key focalexp has no use for (dropped on load)
    from_ours: Callable[[str, FocalNetConfig], str]
    conv_1x1: re.Pattern = field(default=re.compile(r"(?!)"))  # keys (this layout's names) stored (out, in, 1, 1)
    unsupported: Callable[[FocalNetConfig], list[str]] = lambda cfg: []


_LAYOUTS: dict[str, WeightLayout] = {}


def register_layout(layout: WeightLayout) -> WeightLayout:
    """Add a layout; detection tries layouts in the order they were registered."""
    _LAYOUTS[layout.name] = layout
    return layout


def layout_names() -> list[str]:
    return list(_LAYOUTS)


def get_layout(name: str) -> WeightLayout:
    if name not in _LAYOUTS:
        raise UnknownNameError(f"unknown weight layout '{name}'{did_you_mean(name, _LAYOUTS)}; "
                               f"known: {', '.join(_LAYOUTS)}")
    return _LAYOUTS[name]


def find_layout(keys: Sequence[str]) -> WeightLayout | None:
    """The first registered layout that recognises ``keys``, or None."""
    return next((lay for lay in _LAYOUTS.values() if lay.detect(keys)), None)


def _sub_all(k: str, rules: Sequence[tuple[str, object]]) -> str:
    for pat, rep in rules:
        k = re.sub(pat, rep, k)
    return k


def _shift_stage(delta: int):
    """A regex replacement that moves ``<prefix>.{i}.downsample.`` to stage ``i + delta``."""
    def rep(m: re.Match) -> str:
        return f"{m.group(1)}{int(m.group(2)) + delta}{m.group(3)}"
    return rep


def official_architecture_limits(cfg: FocalNetConfig) -> list[str]:
    """What of ``cfg`` the official FocalNet architecture (and its timm/HF ports) cannot express."""
    out = []
    if cfg.token_mixer != "focal_modulation":
        out.append(f"token_mixer={cfg.token_mixer} (only focal_modulation)")
    for k, official in (("gating", "linear"), ("modulation", "multiply"), ("aggregation", "hierarchical")):
        if getattr(cfg, k) != official:
            out.append(f"{k}={getattr(cfg, k)} (only {official})")
    if not cfg.global_context:
        out.append("global_context=false")
    derived = tuple(tuple(2 * k + cfg.focal_windows[i] for k in range(cfg.focal_levels[i])) for i in range(cfg.num_stages))
    if tuple(cfg.stage_kernels(i) for i in range(cfg.num_stages)) != derived:
        out.append("kernels other than focal_window + 2*level (focal_factor 2)")
    if cfg.out_indices is not None:
        out.append("backbone mode (out_indices): no final norm")
    return out


# ---------------------------------------------------------------------------- focalexp
register_layout(WeightLayout(
    name="focalexp",
    description="focalexp's own names (stages.{i}.blocks.{j}...)",
    detect=lambda keys: any(k.startswith("stages.") for k in keys),
    to_ours=lambda k: k,
    from_ours=lambda k, cfg: k,
))


# ---------------------------------------------------------------------------- hf
_HF_IN = [
    (r"^embeddings\.patch_embeddings\.projection\.", "stem.proj."),
    (r"^embeddings\.norm\.", "stem.norm."),
    (r"^(encoder\.stages\.)(\d+)(\.downsample\.)", _shift_stage(+1)),
    (r"^encoder\.stages\.(\d+)\.downsample\.projection\.", r"stages.\1.downsample.proj."),
    (r"^encoder\.stages\.(\d+)\.downsample\.", r"stages.\1.downsample."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"\.modulation\.projection_in\.", ".modulation.f."),
    (r"\.modulation\.projection_context\.", ".modulation.h."),
    (r"\.modulation\.projection_out\.", ".modulation.proj."),
    (r"\.modulation\.layernorm\.", ".modulation.norm."),
    (r"\.gamma_([12])$", r".ls\1.gamma"),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]
_HF_OUT = [
    (r"^stem\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^stem\.norm\.", "embeddings.norm."),
    (r"^(stages\.)(\d+)(\.downsample\.)", _shift_stage(-1)),
    (r"^stages\.(\d+)\.downsample\.proj\.", r"encoder.stages.\1.downsample.projection."),
    (r"^stages\.(\d+)\.downsample\.", r"encoder.stages.\1.downsample."),
    (r"^stages\.(\d+)\.blocks\.(\d+)\.", r"encoder.stages.\1.layers.\2."),
    (r"\.modulation\.f\.", ".modulation.projection_in."),
    (r"\.modulation\.h\.", ".modulation.projection_context."),
    (r"\.modulation\.proj\.", ".modulation.projection_out."),
    (r"\.modulation\.norm\.", ".modulation.layernorm."),
    (r"\.ls([12])\.gamma$", r".gamma_\1"),
    (r"^norm\.", "layernorm."),
]
HF_BACKBONE_KEYS = ("embeddings.patch_embeddings.", "encoder.stages.")


def _hf_detect(keys: Sequence[str]) -> bool:
    return any(k.startswith(("focalnet.embeddings.", "focalnet.encoder.")) or k.startswith(HF_BACKBONE_KEYS)
               for k in keys)


def _hf_to_ours(k: str) -> str | None:
    if k.startswith("focalnet."):
        k = k[len("focalnet."):]
    if k == "embeddings.mask_token":  # FocalNetForMaskedImageModeling's mask token: not part of the classifier
        return None
    return _sub_all(k, _HF_IN)


def _hf_from_ours(k: str, cfg: FocalNetConfig) -> str:
    if k.startswith("head."):
        return "classifier." + k[len("head."):]
    return "focalnet." + _sub_all(k, _HF_OUT)


register_layout(WeightLayout(
    name="hf",
    description="Hugging Face transformers (FocalNetForImageClassification / FocalNetModel)",
    detect=_hf_detect,
    to_ours=_hf_to_ours,
    from_ours=_hf_from_ours,
    conv_1x1=re.compile(r"\.modulation\.projection_context\.weight$"),
    unsupported=official_architecture_limits,
))


# ---------------------------------------------------------------------------- timm
def _timm_to_ours(k: str) -> str:
    k = re.sub(r"^layers\.(\d+)\.", r"stages.\1.", k)
    k = re.sub(r"\.norm([12])_post\.", r".norm\1.", k)
    return re.sub(r"^head\.fc\.", "head.", k)


def _timm_from_ours(k: str, cfg: FocalNetConfig) -> str:
    k = re.sub(r"^stages\.(\d+)\.", r"layers.\1.", k)
    if cfg.use_postln:
        k = re.sub(r"(\.blocks\.\d+)\.norm([12])\.", r"\1.norm\2_post.", k)
    return re.sub(r"^head\.", "head.fc.", k)


def _timm_limits(cfg: FocalNetConfig) -> list[str]:
    out = official_architecture_limits(cfg)
    if cfg.patch_size != 4:
        out.append(f"patch_size={cfg.patch_size} (timm's stem has stride 4; no isotropic FocalNets in timm)")
    if cfg.norm_eps != 1e-5:
        out.append(f"norm_eps={cfg.norm_eps} (timm's FocalNet uses 1e-5)")
    return out


register_layout(WeightLayout(
    name="timm",
    description="timm's focalnet_* (NCHW, 1x1 convolutions)",
    detect=lambda keys: any(k.startswith("stem.") for k in keys),
    to_ours=_timm_to_ours,
    from_ours=_timm_from_ours,
    conv_1x1=re.compile(r"\.modulation\.(f|h|proj)\.weight$|\.mlp\.fc[12]\.weight$"),
    unsupported=_timm_limits,
))


# ---------------------------------------------------------------------------- official
_OFFICIAL_IN = [
    (r"^patch_embed\.", "stem."),
    (r"^(layers\.)(\d+)(\.downsample\.)", _shift_stage(+1)),
    (r"^layers\.(\d+)\.", r"stages.\1."),
    (r"\.gamma_([12])$", r".ls\1.gamma"),
    (r"\.modulation\.ln\.", ".modulation.norm."),
]
_OFFICIAL_OUT = [
    (r"^stem\.", "patch_embed."),
    (r"^(stages\.)(\d+)(\.downsample\.)", _shift_stage(-1)),
    (r"^stages\.(\d+)\.", r"layers.\1."),
    (r"\.ls([12])\.gamma$", r".gamma_\1"),
    (r"\.modulation\.norm\.", ".modulation.ln."),
]


def _official_limits(cfg: FocalNetConfig) -> list[str]:
    out = official_architecture_limits(cfg)
    if cfg.norm_eps != 1e-5:
        out.append(f"norm_eps={cfg.norm_eps} (the official code uses 1e-5)")
    return out


register_layout(WeightLayout(
    name="official",
    description="microsoft/FocalNet *.pth ({'model': state_dict})",
    detect=lambda keys: any(k.startswith("patch_embed.") or re.match(r"layers\.\d+\.blocks\.", k) for k in keys),
    to_ours=lambda k: _sub_all(k, _OFFICIAL_IN),
    from_ours=lambda k, cfg: _sub_all(k, _OFFICIAL_OUT),
    conv_1x1=re.compile(r"\.modulation\.h\.weight$"),
    unsupported=_official_limits,
))
