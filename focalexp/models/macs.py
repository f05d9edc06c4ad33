"""GMACs of any FocalNet without torch: an analytic count in the papers' convention.

:func:`count_macs` returns, for a :class:`~focalexp.models.config.FocalNetConfig` and a square input of
``img_size`` pixels (batch 1), exactly the number that :func:`focalexp.analysis.flops.measure_flops`
reports as ``gmacs`` (fvcore's count with focalexp's ``scaled_dot_product_attention`` handle), and the
same per-stage split as ``FlopsReport.by_stage``. It imports only the standard library, the config and
the errors, so a sweep can print the cost of every model without building one.

What is counted (fvcore's default handles; one multiply-add = 1; biases are free):

* convolutions: ``C_out * C_in/groups * k*k * H_out*W_out`` (stem, downsamples, depthwise focal levels);
* linears: ``tokens * C_in * C_out`` (``f``, ``h``, ``q``, ``proj``, ``qkv``, MLP, head);
* LayerNorm (always affine here): ``5 * numel`` of its input;
* window attention: ``windows * heads * N*N * 2*head_dim`` for ``softmax(q k^T + bias) v``.

What is not (fvcore has no handle for it, or the papers leave it out): element-wise ops (gates,
GELU, modulation, LayerScale, residual adds, masks), means (global context, the head's pooling),
average pooling (the ``pooling`` mixer's context layers), padding, rolls and reshapes.

Spatial sizes follow the modules: the input is zero-padded to a multiple of the network stride when
``pad_input`` (otherwise a size that is not a multiple raises :class:`ConfigError`, as the model
does), convolutions use ``(n + 2p - k) // s + 1``, window attention pads each map to whole windows of
``min(window_size, max(H, W))`` (the padded tokens go through ``qkv`` and the attention, not through
``proj`` or the norm), the head runs only when ``out_indices`` is unset and ``num_classes > 0``, and in
backbone mode (``out_indices``) the stages after the last requested one do not run.

``tests/test_macs.py`` checks the count against fvcore on a table of tiny configs that covers every knob
and token mixer, on a seeded random sample of knob combinations, and against the reference GMACs of every
preset. A mixer this module does not know raises :class:`NotAnalytic`; callers then fall back to fvcore.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from .config import FocalNetConfig, patch_embed_geometry

__all__ = ["MacCount", "NotAnalytic", "count_macs", "gmacs"]

_KNOWN_MIXERS = ("focal_modulation", "pooling", "dwconv", "window_attention")


class NotAnalytic(NotImplementedError):
    """This config has a part the analytic count does not model: measure it with fvcore instead."""


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass (batch 1), in the papers' (fvcore's) convention.

    ``macs`` and ``stage_macs`` are exact integers; ``by_stage`` is keyed like ``FlopsReport.by_stage``
    (``stem``, ``stages.{i}``, and ``norm``/``head`` when the model has them) and in GMACs, computed the
    same way (integer / 1e9), so the two compare exactly. ``by_operator`` splits the total by fvcore's
    operator names (``conv``, ``linear``, ``layer_norm``, ``scaled_dot_product_attention``).
    """

    img_size: int
    macs: int
    stage_macs: dict[str, int] = field(default_factory=dict)
    operator_macs: dict[str, int] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def by_stage(self) -> dict[str, float]:
        return {k: v / 1e9 for k, v in self.stage_macs.items()}

    @property
    def by_operator(self) -> dict[str, float]:
        return {k: v / 1e9 for k, v in self.operator_macs.items() if v}


class _Tally:
    """Accumulates MACs per stage and per operator."""

    def __init__(self) -> None:
        self.stages: dict[str, int] = {}
        self.ops: dict[str, int] = {"conv": 0, "linear": 0, "layer_norm": 0, "scaled_dot_product_attention": 0}
        self.where = ""

    def add(self, op: str, n: int) -> None:
        self.stages[self.where] = self.stages.get(self.where, 0) + n
        self.ops[op] += n

    def conv(self, c_in: int, c_out: int, k: int, h_out: int, w_out: int, groups: int = 1) -> None:
        self.add("conv", c_out * (c_in // groups) * k * k * h_out * w_out)

    def linear(self, tokens: int, c_in: int, c_out: int) -> None:
        self.add("linear", tokens * c_in * c_out)

    def norm(self, tokens: int, c: int) -> None:
        self.add("layer_norm", 5 * tokens * c)


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _patch_embed(t: _Tally, c_in: int, c_out: int, stride: int, overlap: bool, H: int, W: int) -> tuple[int, int]:
    k, p = patch_embed_geometry(stride, overlap)  # the same as layers.PatchEmbed's
    # the input is padded to the network stride, so every map is at least 1x1
    Ho, Wo = _conv_out(H, k, stride, p), _conv_out(W, k, stride, p)
    t.conv(c_in, c_out, k, Ho, Wo)
    t.norm(Ho * Wo, c_out)
    return Ho, Wo


def _mixer(t: _Tally, cfg: FocalNetConfig, stage: int, block: int, H: int, W: int) -> None:
    C, N = cfg.stage_dims[stage], H * W
    mixer = cfg.token_mixer
    if mixer in ("focal_modulation", "pooling"):
        t.linear(N, C, 2 * C + cfg.num_gates(stage))  # f -> q | ctx | gates
        if mixer == "focal_modulation":  # the pooling mixer's AvgPool2d levels are not counted
            for k in cfg.stage_kernels(stage):
                t.conv(C, C, k, H, W, groups=C)  # depthwise, 'same' padding
        t.linear(N, C, C)  # h
    elif mixer == "dwconv":
        t.linear(N, C, C)  # f
        for k in cfg.stage_kernels(stage):
            t.conv(C, C, k, H, W, groups=C)
        t.linear(N, C, C)  # h
        t.linear(N, C, C)  # q
    elif mixer == "window_attention":
        ws = min(cfg.window_size, max(H, W))
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        t.linear(Hp * Wp, C, 3 * C)  # qkv on the padded windows
        n_win, n_tok = (Hp // ws) * (Wp // ws), ws * ws
        # q k^T and attn v: windows * heads * N * N * (hd + hd) = windows * N * N * 2C
        t.add("scaled_dot_product_attention", n_win * n_tok * n_tok * 2 * C)
    else:  # pragma: no cover - a mixer added to the config but not here
        raise NotAnalytic(f"token_mixer '{mixer}' has no analytic MAC count; measure it with fvcore")
    if cfg.use_postln_in_modulation:
        t.norm(N, C)
    t.linear(N, C, C)  # proj


def _block(t: _Tally, cfg: FocalNetConfig, stage: int, block: int, H: int, W: int) -> None:
    C, N = cfg.stage_dims[stage], H * W
    t.norm(N, C)  # norm1 (pre-norm on the input or res-post-norm on the mixer output: same size)
    _mixer(t, cfg, stage, block, H, W)
    t.norm(N, C)  # norm2
    hidden = int(C * cfg.mlp_ratio)
    t.linear(N, C, hidden)
    t.linear(N, hidden, C)


def _input_size(cfg: FocalNetConfig, img_size: int) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ConfigError(f"img_size: expected an integer >= 1, got {img_size!r}")
    s = cfg.stride
    if img_size % s:
        if not cfg.pad_input:
            raise ConfigError(
                f"input: {img_size}x{img_size} is not a multiple of the network stride {s}; resize/crop to a "
                f"multiple or build the model with pad_input=true"
            )
        img_size += -img_size % s
    return img_size


def count_macs(cfg: FocalNetConfig, img_size: int | None = None) -> MacCount:
    """MACs of ``cfg`` on one ``in_chans x img_size x img_size`` image (default ``cfg.img_size``).

    Equals ``measure_flops(model_for_counting(cfg), img_size).gmacs * 1e9`` and its ``by_stage``; raises
    :class:`ConfigError` where the model would reject the input and :class:`NotAnalytic` for a part it
    does not model.
    """
    if not isinstance(cfg, FocalNetConfig):
        raise TypeError(f"count_macs: expected a FocalNetConfig, got {type(cfg).__name__}")
    if cfg.token_mixer not in _KNOWN_MIXERS:
        raise NotAnalytic(f"token_mixer '{cfg.token_mixer}' has no analytic MAC count; measure it with fvcore")
    img = cfg.img_size if img_size is None else img_size
    H = W = _input_size(cfg, img)
    dims = cfg.stage_dims
    t = _Tally()

    t.where = "stem"
    H, W = _patch_embed(t, cfg.in_chans, dims[0], cfg.patch_size, cfg.use_conv_embed, H, W)
    # backbone mode stops after the last requested stage; the others exist but count 0
    last = cfg.num_stages - 1 if cfg.out_indices is None else max(cfg.out_indices)
    for i, depth in enumerate(cfg.depths):
        t.where = f"stages.{i}"
        t.stages.setdefault(t.where, 0)
        if i > last:
            continue
        if i > 0:
            H, W = _patch_embed(t, dims[i - 1], dims[i], 2, cfg.use_conv_embed, H, W)
        for j in range(depth):
            _block(t, cfg, i, j, H, W)
    if cfg.out_indices is None:
        t.where = "norm"
        t.norm(H * W, dims[-1])
        t.where = "head"
        t.stages.setdefault("head", 0)
        if cfg.num_classes > 0:
            t.linear(1, dims[-1], cfg.num_classes)  # after the mean over H, W (not counted)
    return MacCount(img_size=img, macs=sum(t.stages.values()), stage_macs=dict(t.stages), operator_macs=dict(t.ops))


def gmacs(cfg: FocalNetConfig, img_size: int | None = None) -> float:
    """Total GMACs of ``cfg`` (papers' convention), as ``FlopsReport.gmacs`` reports it."""
    return count_macs(cfg, img_size).gmacs
