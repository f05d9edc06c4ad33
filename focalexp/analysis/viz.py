"""One call from a model name to a figure: what ``focalexp viz`` runs (and what a notebook can call).

``what``:

``modulator``  modulator magnitude of the last block of every stage (or ``blocks``), one row per image
``gates``      every gate (levels and global) of one block (default: the last block, as the paper)
``context``    magnitude of every level's context ``z_l`` of one block (default: the last block)
``kernels``    depthwise kernels, mean over channels, per stage (columns) and level (rows)
``erf``        effective receptive field of the model, of its variants with ``levels`` focal levels,
               and of ``baselines`` (any timm model), side by side
``compare``    FocalNet's modulator beside Swin's window attention (centre query) and ViT's attention
               rollout and last-block CLS attention, for the same images
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError, did_you_mean

WHATS = ("modulator", "gates", "context", "kernels", "erf", "compare")
DEFAULT_BASELINES = ("swin_tiny_patch4_window7_224", "vit_small_patch16_224")


@dataclass
class VizModel:
    model: nn.Module
    label: str
    weights: str  # "random weights" or the checkpoint's file name

    @property
    def caption(self) -> str:
        return f"{self.label} ({self.weights})"


def _checkpoint_path(path: str | os.PathLike | None) -> Path | None:
    if path is None:
        return None
    from ..fileio import input_file

    return input_file(path, "--checkpoint")


def build_focalnet(name: str | None, checkpoint: str | os.PathLike | None = None,
                   overrides: Mapping[str, Any] | None = None) -> VizModel:
    """A focalexp preset (or the config stored in a focalexp checkpoint), or a timm model by name."""
    from ..models import create_model
    from ..models.resolve import resolve_model_spec

    ckpt = _checkpoint_path(checkpoint)
    if name is None and ckpt is None:
        raise ConfigError("--model: name a model, or give a focalexp --checkpoint that carries its config")
    if name is not None:
        spec = resolve_model_spec(name.partition("=")[0], overrides)  # a timm name may carry =PATH
        if spec.config is None:
            return build_timm(name, ckpt)
        return VizModel(create_model(spec.config, checkpoint=ckpt).eval(), spec.label,
                        ckpt.name if ckpt else "random weights")
    overrides = {k[len("model."):] if k.startswith("model.") else k: v for k, v in (overrides or {}).items()}
    model = create_model(None, checkpoint=ckpt, **overrides)
    label = f"focalnet from {ckpt.name}"
    if overrides:
        label += " (" + ", ".join(f"{k}={v}" for k, v in overrides.items()) + ")"
    return VizModel(model.eval(), label, ckpt.name)


def build_timm(spec: str, checkpoint: str | os.PathLike | None = None) -> VizModel:
    """A timm model by name; ``NAME=PATH`` (or ``checkpoint``) loads local weights."""
    import timm

    from ..errors import UnknownNameError
    from ..models.resolve import timm_model_name

    name, _, path = spec.partition("=")
    ckpt = _checkpoint_path(path or checkpoint)
    try:
        name = timm_model_name(name)
    except UnknownNameError as e:
        raise ConfigError(f"model: {e}") from None
    model = timm.create_model(name, pretrained=False)
    if ckpt is not None:
        from timm.models import clean_state_dict

        from ..models.checkpoint import read_state

        st = read_state(ckpt, "--baseline" if path else "--checkpoint")  # the allowlist, not timm's torch.load
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(st, dict) and isinstance(st.get(key), dict):
                st = st[key]
                break
        if not isinstance(st, dict) or not any(isinstance(v, torch.Tensor) for v in st.values()):
            raise ConfigError(f"checkpoint: '{ckpt}' holds no state dict of tensors for {name}")
        try:
            model.load_state_dict(clean_state_dict(st))
        except Exception as e:  # noqa: BLE001 - a file that does not fit the architecture
            raise ConfigError(f"checkpoint: '{ckpt}' does not fit {name} ({str(e).splitlines()[0][:200]})") from None
    return VizModel(model.eval(), name, ckpt.name if ckpt else "random weights")


def _stage_label(block: str) -> str:
    return block.replace(".modulation", "").replace("stages.", "stage ").replace("layers.", "stage ").replace(".blocks.", ", block ")


def check_request(what: str, out: str | os.PathLike, levels: Sequence[int] | None = None) -> Path:
    """The cheap checks of a figure request (before any model is built); returns the output path."""
    from .figures import check_figure_path

    if what not in WHATS:
        raise ConfigError(f"--what: unknown '{what}'" + (did_you_mean(what, WHATS) or f" (one of {', '.join(WHATS)})"))
    if levels and what != "erf":
        raise ConfigError("--levels: applies to --what erf only")
    if any(L < 0 for L in levels or ()):
        raise ConfigError(f"--levels: expected focal levels >= 0, got {list(levels)}")
    from ..fileio import output_file

    return output_file(check_figure_path(out), "--out")


def render(
    what: str,
    vm: VizModel,
    *,
    out: str | os.PathLike,
    images: Sequence[str | os.PathLike] | None = None,
    img_size: int = 224,
    blocks: Sequence[str | int] | None = None,
    levels: Sequence[int] | None = None,
    baselines: Sequence[str] | None = None,
    shared_scale: bool = False,
    max_images: int = 4,
) -> Path:
    """Compute the maps ``what`` asks for and save the figure to ``out``; returns the path."""
    from . import figures, maps
    from .images import load_images, sample_photos

    out = check_request(what, out, levels)
    if levels and getattr(vm.model, "config", None) is None:
        raise ConfigError("--levels: needs a focalexp FocalNet model (a preset), not a timm model")
    batch = load_images(images or sample_photos()[:max_images], img_size)
    x = batch.tensor

    if what == "modulator":
        fm = maps.modulation_maps(vm.model, x, blocks)
        cols = {_stage_label(n): m.modulator for n, m in fm.items()}
        fig = figures.plot_map_panels(batch.display, cols, row_labels=batch.names, shared_scale=shared_scale,
                                      title=f"{vm.caption}: modulator magnitude ||h(.)||, per pixel", out=out)
    elif what in ("gates", "context"):
        fm = maps.modulation_maps(vm.model, x, blocks if blocks else [-1])
        if len(fm) != 1:
            raise ConfigError(f"--block: {what} shows one block; got {len(fm)}")
        (name, m), = fm.items()
        if what == "gates":
            if m.gates is None:
                raise ConfigError("--what gates: this model has no gates (gating=none)")
            cols = {g: m.gates[:, i] for i, g in enumerate(m.gate_labels)}
            desc = "gates as applied (levels and global)"
        else:
            cols = {lab: m.context[:, i] for i, lab in enumerate(m.context_labels)}
            desc = "context magnitude ||z_l|| per level"
        fig = figures.plot_map_panels(batch.display, cols, row_labels=batch.names, shared_scale=shared_scale,
                                      title=f"{vm.caption}, {_stage_label(name)}: {desc}", out=out)
    elif what == "kernels":
        fig = figures.plot_kernels(maps.kernel_maps(vm.model, blocks),
                                   title=f"{vm.caption}: depthwise focal kernels, mean over channels", out=out)
    elif what == "erf":
        models = {vm.label: vm.model}
        if levels:
            from ..models import FocalNet

            models = {}
            for L in levels:
                torch.manual_seed(0)
                models[f"focal_levels={L}"] = FocalNet(vm.model.config.replace(focal_levels=L)).eval()
        for b in baselines or ():
            bm = build_timm(b)
            models[bm.label] = bm.model
        erfs = {k: maps.effective_receptive_field(m, x) for k, m in models.items()}
        weights = vm.weights if not levels else "random weights"
        fig = figures.plot_erf(erfs, title=f"effective receptive field, {len(x)} images at {img_size}px ({weights})",
                               out=out)
    else:  # compare
        names = list(baselines) if baselines else list(DEFAULT_BASELINES)
        cols, markers = {}, {}
        fm = maps.modulation_maps(vm.model, x, [-1])
        cols[f"{vm.label}: modulator, last block"] = next(iter(fm.values())).modulator
        captions = [vm.caption]
        for b in names:
            bm = build_timm(b)
            captions.append(bm.caption)
            if hasattr(bm.model, "num_prefix_tokens") and hasattr(bm.model, "blocks"):
                att = maps.vit_attention_maps(bm.model, x)
                cols[f"{bm.label}: attention rollout"] = att["rollout"]
                cols[f"{bm.label}: last-block CLS attention"] = att["cls"]
            elif hasattr(bm.model, "layers"):
                key = f"{bm.label}: window attention, centre query"
                centre = (0.5, 0.5)
                cols[key] = maps.swin_window_attention(bm.model, x, query=centre)
                markers[key] = maps.query_marker(centre, tuple(cols[key].shape[-2:]))
            else:
                raise ConfigError(f"--baseline: '{b}' is neither a timm ViT nor a timm Swin")
        wrap = lambda k: k.replace(": ", ":\n", 1)  # noqa: E731
        fig = figures.plot_map_panels(batch.display, {wrap(k): v for k, v in cols.items()},
                                      row_labels=batch.names, markers={wrap(k): v for k, v in markers.items()},
                                      title="; ".join(captions), out=out)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out
