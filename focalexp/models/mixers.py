"""Token mixers: what a FocalNet block mixes its tokens with, one class per ``FocalNetConfig.token_mixer`` value.

Built in: ``focal_modulation`` (:class:`FocalModulation`), ``pooling`` (:class:`PoolingModulation`, the
paper's pooling aggregator), ``dwconv`` (:class:`DWConvMixer`, the paper's depth-wise ConvNet) and
``window_attention`` (:class:`WindowAttention`, Swin's (shifted) window attention).

Every mixer is a :class:`TokenMixer`: channels-last ``(B, H, W, C)`` in and out, its own layers in
:meth:`~TokenMixer.mix`, then one shared output tail, ``proj_drop(proj(norm(.)))`` (``norm`` is the
LayerNorm of ``use_postln_in_modulation``, absent otherwise). Adding a mixer is one class and its
registration::

    from focalexp.models.fastpath import Linear
    from focalexp.models.mixers import TokenMixer, register_mixer

    @register_mixer("token_mlp")
    class TokenMLP(TokenMixer):
        def __init__(self, dim, *, postln=False, proj_drop=0.0, eps=1e-5):
            super().__init__(dim)
            self.fc = Linear(dim, dim)                      # the mixer's own layers first,
            self.add_output(postln=postln, proj_drop=proj_drop, eps=eps)  # the shared tail last

        @classmethod
        def from_config(cls, cfg, stage, block):         # the config's knobs -> constructor arguments
            return cls(cfg.stage_dims[stage], **cls.output_kwargs(cfg))

        def mix(self, x):                                 # (B, H, W, C) -> (B, H, W, C)
            return self.fc(x)

after which ``token_mixer: token_mlp`` is a valid config value (``register_mixer`` adds the name to the
choices :class:`~focalexp.models.config.FocalNetConfig` validates against) in every process that imports
the module holding the class: a sweep's nodes too. ``gated=True`` declares that the gating knobs
(``gating``, ``modulation``, ``aggregation``, ``global_context``) apply to the mixer.

The tail comes last because parameters are created, initialised (seeded) and listed in the order the
layers are assigned: keeping that order keeps every existing checkpoint's state-dict keys, optimizer state
and seeded initialisation as they were.

Hook points of focal modulation (all outputs NCHW-shaped; nothing is stored on the modules):

==================================================  ===============================================
``stages.{i}.blocks.{j}.modulation.f``              input projection, ``(B, H, W, 2C+G)`` (q | ctx | gates)
``...modulation.gates``                             the gates as applied, ``(B, G, H, W)``
``...modulation.focal_layers.{l}``                  context of focal level ``l+1``, ``(B, C, H, W)``
``...modulation.global_context``                    global context ``GELU(GAP(z^L))``, ``(B, C, 1, 1)``
``...modulation.h``                                 the modulator ``h(sum_l g_l z_l)``, ``(B, C, H, W)``
                                                    (its input is the aggregated context)
==================================================  ===============================================
"""

from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ..errors import UnknownNameError, did_you_mean
from .capture import is_capturing, is_fx_tracing
from .config import FocalNetConfig, add_token_mixer
from .fastpath import ChannelLinear, Linear
from .layout import to_nchw, to_nhwc


# ---------------------------------------------------------------------------- base and registry
class TokenMixer(nn.Module):
    """Base of every token mixer: ``forward(x) = proj_drop(proj(norm(mix(x))))`` on ``(B, H, W, C)``.

    A subclass builds its own layers, then calls :meth:`add_output` (last), and implements :meth:`mix`
    and :meth:`from_config`.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def add_output(self, *, postln: bool = False, proj_drop: float = 0.0, eps: float = 1e-5) -> None:
        """The shared output tail: ``norm`` (a LayerNorm when ``postln``, else None), ``proj``, ``proj_drop``."""
        self.norm = nn.LayerNorm(self.dim, eps=eps) if postln else None
        self.proj = Linear(self.dim, self.dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def output_kwargs(cfg: FocalNetConfig) -> dict[str, Any]:
        """The tail's constructor arguments from a config (``use_postln_in_modulation``, ``drop_rate``, ``norm_eps``)."""
        return dict(postln=cfg.use_postln_in_modulation, proj_drop=cfg.drop_rate, eps=cfg.norm_eps)

    @classmethod
    def from_config(cls, cfg: FocalNetConfig, stage: int, block: int) -> "TokenMixer":
        """The mixer of block ``block`` of stage ``stage`` of a model built from ``cfg``."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build itself from a config (from_config)")

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The mixer's own computation, before the output tail: ``(B, H, W, C)`` -> ``(B, H, W, C)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mix(x)
        if self.norm is not None:
            out = self.norm(out)
        return self.proj_drop(self.proj(out))


_MIXERS: dict[str, type[TokenMixer]] = {}
M = TypeVar("M", bound=type)


def register_mixer(name: str, *, gated: bool = False) -> Callable[[M], M]:
    """Class decorator: ``token_mixer: name`` builds this :class:`TokenMixer` subclass (``cls.from_config``).

    ``gated``: the gating knobs (``gating``, ``modulation``, ``aggregation``, ``global_context``) apply to
    it. Registering another class under a taken name is an error; re-running the same class definition
    (a notebook cell) replaces it.
    """

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, TokenMixer)):
            raise TypeError(f"register_mixer('{name}'): expected a TokenMixer subclass, got {cls!r}")
        old = _MIXERS.get(name)
        if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"token mixer '{name}' is already registered ({old.__module__}.{old.__qualname__})")
        add_token_mixer(name, gated=gated)
        _MIXERS[name] = cls
        return cls

    return deco


def registered_mixers() -> dict[str, type[TokenMixer]]:
    """Every registered token mixer: config name -> class."""
    return dict(_MIXERS)


def mixer_class(name: str) -> type[TokenMixer]:
    if name not in _MIXERS:
        raise UnknownNameError(f"unknown value '{name}'{did_you_mean(name, _MIXERS)}; "
                               f"registered: {', '.join(_MIXERS)}", key="token_mixer")
    return _MIXERS[name]


def build_mixer(cfg: FocalNetConfig, stage: int, block: int) -> TokenMixer:
    """The token mixer of block ``block`` of stage ``stage``, as the config asks."""
    return mixer_class(cfg.token_mixer).from_config(cfg, stage, block)


# ---------------------------------------------------------------------------- focal modulation
class GateActivation(nn.Module):
    """Turns the raw gate logits into the gates that weight each level: a hook point.

    ``linear`` (official) applies nothing, ``sigmoid`` squashes each gate to (0, 1), ``softmax``
    normalises over the levels at every pixel.
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        if self.kind == "sigmoid":
            return torch.sigmoid(g)
        if self.kind == "softmax":
            return torch.softmax(g, dim=1)
        return g

    def extra_repr(self) -> str:
        return self.kind


class GlobalContext(nn.Module):
    """``GELU(mean_{H,W}(z))``: the global level of focal modulation, a hook point.

    The mean is taken on the channels-last view: its backward (a broadcast) then keeps the gradient of
    the last level channels-last, so GELU's and the depthwise conv's backward see one layout.
    """

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        return to_nchw(F.gelu(to_nhwc(ctx).mean((1, 2), keepdim=True)))


def _context_layer(dim: int, k: int, op: str) -> nn.Sequential:
    if op == "avgpool":
        first: nn.Module = nn.AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=False)
    else:
        first = nn.Conv2d(dim, dim, k, stride=1, padding=k // 2, groups=dim, bias=False)
    return nn.Sequential(first, nn.GELU())


@register_mixer("focal_modulation", gated=True)
class FocalModulation(TokenMixer):
    """Focal modulation, with the paper's ablations as options.

    ``y = proj(q ⊙ h(Σ_l g_l · z_l + g_{L+1} · GELU(GAP(z_L))))`` where ``z_0 = f_z(x)`` and
    ``z_l = GELU(DWConv_{k_l}(z_{l-1}))``. Input and output are channels-last ``(B, H, W, C)``.

    Options: ``gating`` (linear/none/sigmoid/softmax), ``modulation`` (multiply/add), ``aggregation``
    (hierarchical/top_only), ``global_context``, ``context_op`` (``dwconv``; ``avgpool`` gives the
    paper's pooling aggregator; default: the class's, see :class:`PoolingModulation`),
    ``normalize_modulator`` and ``postln`` (LayerNorm before ``proj``).
    """

    context_op = "dwconv"  # what every focal level runs before its GELU

    def __init__(
        self,
        dim: int,
        kernels: Sequence[int],
        *,
        gating: str = "linear",
        modulation: str = "multiply",
        aggregation: str = "hierarchical",
        global_context: bool = True,
        context_op: str | None = None,
        normalize_modulator: bool = False,
        postln: bool = False,
        proj_drop: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__(dim)
        self.kernel_sizes = tuple(kernels)
        self.focal_level = len(self.kernel_sizes)
        self.hierarchical_sum = aggregation == "hierarchical"
        self.multiply = modulation == "multiply"
        self.normalize_modulator = normalize_modulator
        n_local = self.focal_level if self.hierarchical_sum else min(self.focal_level, 1)
        self.num_aggregated = n_local + int(global_context)
        self.num_gates = 0 if gating == "none" else self.num_aggregated

        op = context_op or self.context_op
        self.f = Linear(dim, 2 * dim + self.num_gates)
        self.focal_layers = nn.ModuleList([_context_layer(dim, k, op) for k in self.kernel_sizes])
        self.gates = GateActivation(gating) if self.num_gates else None
        self.global_context = GlobalContext() if global_context else None
        self.h = ChannelLinear(dim, dim)
        self.add_output(postln=postln, proj_drop=proj_drop, eps=eps)

    @classmethod
    def from_config(cls, cfg: FocalNetConfig, stage: int, block: int) -> "FocalModulation":
        return cls(
            cfg.stage_dims[stage],
            cfg.stage_kernels(stage),
            gating=cfg.gating,
            modulation=cfg.modulation,
            aggregation=cfg.aggregation,
            global_context=cfg.global_context,
            normalize_modulator=cfg.normalize_modulator,
            **cls.output_kwargs(cfg),
        )

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        C = self.dim
        # split, not slicing: the backward of a split is one concatenation, while each slice's
        # backward zero-fills a tensor as large as f's output
        q, ctx, g_raw = torch.split(self.f(x), [C, C, self.num_gates], dim=-1)
        q, ctx = to_nchw(q), to_nchw(ctx)
        gates: Optional[torch.Tensor] = None
        if self.gates is not None:
            gates = self.gates(to_nchw(g_raw))

        ctx_all: Optional[torch.Tensor] = None
        g = 0
        last = self.focal_level - 1
        for lvl, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            if self.hierarchical_sum or lvl == last:
                term = ctx
                if gates is not None:
                    term = ctx * gates[:, g : g + 1]
                ctx_all = term if ctx_all is None else ctx_all + term
                g += 1
        if self.global_context is not None:
            glob = self.global_context(ctx)
            if gates is not None:
                glob = glob * gates[:, g : g + 1]
            ctx_all = glob if ctx_all is None else ctx_all + glob
        assert ctx_all is not None  # the config guarantees a level or the global context
        if self.normalize_modulator:
            ctx_all = ctx_all / self.num_aggregated

        modulator = self.h(ctx_all)
        out = q * modulator if self.multiply else q + modulator
        return to_nhwc(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernels={list(self.kernel_sizes)}, aggregated={self.num_aggregated}"


@register_mixer("pooling", gated=True)
class PoolingModulation(FocalModulation):
    """The paper's pooling aggregator (Table 12): focal modulation whose levels average-pool
    (``AvgPool2d(k, stride 1)``, no weights) instead of running depthwise convolutions."""

    context_op = "avgpool"


# ---------------------------------------------------------------------------- other mixers
@register_mixer("dwconv")
class DWConvMixer(TokenMixer):
    """The paper's "depth-wise ConvNet" variant (Table 12): ``y = q(GELU(h(z^L)))``.

    The same stack of depthwise convolutions as focal modulation, but the top level alone feeds a
    ``h -> GELU -> q`` chain: no gates, no aggregation, no element-wise modulation.
    """

    def __init__(self, dim: int, kernels: Sequence[int], *, postln: bool = False, proj_drop: float = 0.0, eps: float = 1e-5):
        super().__init__(dim)
        self.kernel_sizes = tuple(kernels)
        self.f = Linear(dim, dim)
        self.focal_layers = nn.ModuleList([_context_layer(dim, k, "dwconv") for k in self.kernel_sizes])
        self.h = ChannelLinear(dim, dim)
        self.act = nn.GELU()
        self.q = Linear(dim, dim)
        self.add_output(postln=postln, proj_drop=proj_drop, eps=eps)

    @classmethod
    def from_config(cls, cfg: FocalNetConfig, stage: int, block: int) -> "DWConvMixer":
        return cls(cfg.stage_dims[stage], cfg.stage_kernels(stage), **cls.output_kwargs(cfg))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        ctx = to_nchw(self.f(x))
        for layer in self.focal_layers:
            ctx = layer(ctx)
        return self.q(self.act(to_nhwc(self.h(ctx))))


@register_mixer("window_attention")
class WindowAttention(TokenMixer):
    """Swin-style (shifted) window multi-head self-attention with a relative position bias.

    Works on any map size: the map is zero-padded to whole windows and padded tokens are masked out;
    maps no larger than a window use one window and no shift (as Swin does). Input and output are
    channels-last ``(B, H, W, C)``. Built from a config, odd blocks of a stage are shifted.
    """

    __jit_ignored_attributes__ = ["_cache"]  # eager-only (see _cached_attn_bias)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shifted: bool = False,
        *,
        postln: bool = False,
        proj_drop: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__(dim)
        self.num_heads = num_heads
        self.window_size = window_size
        self.shifted = shifted
        self.qkv = Linear(dim, 3 * dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.add_output(postln=postln, proj_drop=proj_drop, eps=eps)
        self._cache: dict = {}

    @classmethod
    def from_config(cls, cfg: FocalNetConfig, stage: int, block: int) -> "WindowAttention":
        return cls(cfg.stage_dims[stage], cfg.num_heads(stage), cfg.window_size, shifted=block % 2 == 1,
                   **cls.output_kwargs(cfg))

    @torch.jit.unused
    def _cached_attn_bias(self, H: int, W: int, ws: int, shift: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Eager path: the position bias (heads, N, N), plus the window mask (nW, heads, N, N) when one is needed;
        the index and the mask are cached per geometry (never under capture: a trace must see their ops)."""
        key = ("idx", ws, device)
        if key not in self._cache:
            self._cache[key] = relative_position_index(ws, self.window_size).to(device)
        N = ws * ws
        bias = self.relative_position_bias_table[self._cache[key].reshape(-1)]
        bias = bias.reshape(N, N, self.num_heads).permute(2, 0, 1).to(dtype)
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        if not shift and Hp == H and Wp == W:
            return bias
        key = ("mask", H, W, ws, shift, device)
        if key not in self._cache:
            self._cache[key] = window_mask(H, W, ws, shift).to(device)
        return bias + self._cache[key].to(dtype)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        ws, shift, Hp, Wp = window_geometry(H, W, self.window_size, self.shifted)
        symbolic = is_fx_tracing()  # sizes are Proxies: pad and roll always (by zero where nothing is needed)
        if symbolic or Hp != H or Wp != W:
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        if symbolic or shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        nh, nw, N, hd = Hp // ws, Wp // ws, ws * ws, C // self.num_heads
        win = x.reshape(B, nh, ws, nw, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, nh * nw, N, C)
        qkv = self.qkv(win).reshape(B, nh * nw, N, 3, self.num_heads, hd).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)  # (B, nW, heads, N, hd)
        if is_capturing():
            attn_mask = window_attention_bias(self.relative_position_bias_table, H, W, ws, shift, self.window_size,
                                              self.num_heads).to(q.dtype)
        else:
            attn_mask = self._cached_attn_bias(H, W, ws, shift, x.device, q.dtype)
        # 4-D attention (B, windows x heads, N, hd), the form every backend (and ONNX's SDPA) takes
        nwh = nh * nw * self.num_heads
        out = F.scaled_dot_product_attention(
            q.reshape(B, nwh, N, hd), k.reshape(B, nwh, N, hd), v.reshape(B, nwh, N, hd),
            attn_mask=attn_mask.expand(nh * nw, self.num_heads, N, N).reshape(nwh, N, N),
        ).reshape(B, nh * nw, self.num_heads, N, hd)
        out = out.permute(0, 1, 3, 2, 4).reshape(B, nh, nw, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        if symbolic or shift > 0:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out[:, :H, :W]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, window={self.window_size}, shifted={self.shifted}"


# ---------------------------------------------------------------------------- window geometry (TorchScript-able)
# torch.fx treats the two wrapped functions as leaves: they read the map size, which is a Proxy while tracing.
@torch.fx.wrap
def window_geometry(H: int, W: int, window_size: int, shifted: bool) -> Tuple[int, int, int, int]:
    """``(ws, shift, Hp, Wp)`` for an ``H x W`` map: maps no larger than a window use one window and no shift."""
    ws = min(window_size, max(H, W))
    shift = ws // 2 if shifted and min(H, W) > ws else 0
    return ws, shift, -(-H // ws) * ws, -(-W // ws) * ws


def relative_position_index(ws: int, window_size: int) -> torch.Tensor:
    """``(N, N)`` index into the ``(2 * window_size - 1) ** 2`` bias table for a ``ws x ws`` window."""
    coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window_size - 1)
    return rel[0] * (2 * window_size - 1) + rel[1]


def _position_classes(n: int, n_pad: int, shift: int) -> torch.Tensor:
    # class of every position of the (rolled) padded map along one axis: 0 normal, 1 wrapped around by the
    # shift, 2 padding. Tokens attend only within their class.
    orig = (torch.arange(n_pad) + shift) % n_pad
    return torch.where(orig >= n, 2, torch.where(orig < shift, 1, 0))


def window_mask(H: int, W: int, ws: int, shift: int) -> torch.Tensor:
    """``(nW, 1, N, N)`` additive mask (0 or -inf) of the padded, rolled ``H x W`` map in ``ws`` windows."""
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    ids = _position_classes(H, Hp, shift)[:, None] * 3 + _position_classes(W, Wp, shift)[None, :]
    ids = ids.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    same = ids[:, :, None] == ids[:, None, :]
    mask = torch.zeros(same.shape).masked_fill_(~same, float("-inf"))
    return mask[:, None]


@torch.fx.wrap
def window_attention_bias(table: torch.Tensor, H: int, W: int, ws: int, shift: int, window_size: int,
                          num_heads: int) -> torch.Tensor:
    """Position bias ``(heads, N, N)``, plus the window mask ``(nW, heads, N, N)`` where windows are shifted or
    padded, computed afresh (the captured path; the eager one caches them)."""
    N = ws * ws
    bias = table[relative_position_index(ws, window_size).to(table.device).reshape(-1)]
    bias = bias.reshape(N, N, num_heads).permute(2, 0, 1)
    if shift == 0 and H % ws == 0 and W % ws == 0:
        return bias
    return bias + window_mask(H, W, ws, shift).to(table.device, table.dtype)
