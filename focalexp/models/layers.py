"""Building blocks of a FocalNet: the token mixers, the block, patch embedding.

Layout. Every tensor that crosses a module boundary is shaped NCHW (``(B, C, H, W)``), like timm's
model, but is stored channels-last in memory. Moving between the two views is a ``permute`` and never a
copy: token-wise layers (Linear, LayerNorm) run on the contiguous ``(B, H, W, C)`` view, depthwise
convolutions run on the channels-last NCHW view (on CPU about 5-40x faster than on contiguous NCHW).

Hook points (all outputs NCHW-shaped; nothing is stored on the modules):

==================================================  ===============================================
``stages.{i}.blocks.{j}.modulation.f``              input projection, ``(B, H, W, 2C+G)`` (q | ctx | gates)
``...modulation.gates``                             the gates as applied, ``(B, G, H, W)``
``...modulation.focal_layers.{l}``                  context of focal level ``l+1``, ``(B, C, H, W)``
``...modulation.global_context``                    global context ``GELU(GAP(z^L))``, ``(B, C, 1, 1)``
``...modulation.h``                                 the modulator ``h(sum_l g_l z_l)``, ``(B, C, H, W)``
                                                    (its input is the aggregated context)
==================================================  ===============================================
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch.utils._python_dispatch import _get_current_dispatch_mode


# ---------------------------------------------------------------------------- fast path
# CPU inference in fp32: token-wise projections go through oneDNN's inner product (the primitive
# PyTorch's own compiler emits for CPU linears), which adds the bias inside the GEMM instead of
# first copying it into the output, and applies the MLP's GELU in the same pass. Everything else
# (training, autocast, other dtypes and devices, tracing, FLOP counting, torch.compile) takes the
# reference path ``F.linear``. Both give the same numbers (tests compare them); the fast path is
# measured against timm by ``analysis/speed_vs_timm.py``. ``FOCALEXP_FAST_PATH=0`` or
# :func:`reference_path` turns it off.
_FAST = os.environ.get("FOCALEXP_FAST_PATH", "1") != "0"
_MKLDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
)


def fast_path_enabled() -> bool:
    return _FAST and _MKLDNN_LINEAR is not None


def set_fast_path(enabled: bool) -> None:
    """Turn the CPU-inference fast path on or off for the whole process."""
    global _FAST
    _FAST = bool(enabled)


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Run the reference path (``F.linear`` everywhere) inside the block."""
    global _FAST
    before, _FAST = _FAST, False
    try:
        yield
    finally:
        _FAST = before


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 spelled it differently
        return torch.is_autocast_cpu_enabled()


# oneDNN reorders the weight on every call; below this many rows that costs more than the bias copy
# and separate GELU it saves, and MKL's GEMM behind F.linear is faster (measured on FocalNet-T's shapes)
FAST_MIN_ROWS = 8192


def _use_fast(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _FAST
        and x.numel() >= FAST_MIN_ROWS * x.shape[-1]
        and _MKLDNN_LINEAR is not None
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not _autocast_on()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _dispatch_mode_active()
    )


def _dispatch_mode_active() -> bool:
    # FlopCounterMode, FakeTensorMode and friends: they must see the reference ops
    return _get_current_dispatch_mode() is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None = None) -> torch.Tensor:
    """``F.linear`` (then GELU when ``act="gelu"``), on the fast path where it applies."""
    if _use_fast(x, weight):
        return _MKLDNN_LINEAR(x, weight, bias, act or "none", [], "none" if act else "")
    y = F.linear(x, weight, bias)
    return F.gelu(y) if act == "gelu" else y


class Linear(nn.Linear):
    """``nn.Linear`` on the fast path where it applies (same parameters, same hooks, same numbers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class ChannelLinear(Linear):
    """A Linear over the channels of an NCHW-shaped tensor (a 1x1 convolution stored as a Linear).

    On a channels-last tensor both permutes are views, so this is one GEMM with no copies. Its weight
    has the Linear shape ``(out, in)``; the official code's ``h`` is a ``Conv2d(k=1)`` with the same
    default initialisation, so the official init leaves it as is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(linear(to_nhwc(x), self.weight, self.bias))


class LayerScale(nn.Module):
    """Per-channel scale on a channels-last tensor (official ``gamma_1/2``, timm ``ls1/2.gamma``)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


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


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, on a channels-last tensor (official layout)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.training and self.act.approximate == "none" and not self.fc1._forward_hooks
                and not self.fc1._forward_pre_hooks and not self.act._forward_hooks and not self.act._forward_pre_hooks):
            h = linear(x, self.fc1.weight, self.fc1.bias, "gelu")  # GELU fused on the fast path
        else:
            h = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(h))


def _context_layer(dim: int, k: int, op: str) -> nn.Sequential:
    if op == "avgpool":
        first: nn.Module = nn.AvgPool2d(k, stride=1, padding=k // 2, count_include_pad=False)
    else:
        first = nn.Conv2d(dim, dim, k, stride=1, padding=k // 2, groups=dim, bias=False)
    return nn.Sequential(first, nn.GELU())


class FocalModulation(nn.Module):
    """Focal modulation, with the paper's ablations as options.

    ``y = proj(q ⊙ h(Σ_l g_l · z_l + g_{L+1} · GELU(GAP(z_L))))`` where ``z_0 = f_z(x)`` and
    ``z_l = GELU(DWConv_{k_l}(z_{l-1}))``. Input and output are channels-last ``(B, H, W, C)``.

    Options: ``gating`` (linear/none/sigmoid/softmax), ``modulation`` (multiply/add), ``aggregation``
    (hierarchical/top_only), ``global_context``, ``context_op`` (``dwconv``; ``avgpool`` gives the
    paper's pooling aggregator), ``normalize_modulator`` and ``postln`` (LayerNorm before ``proj``).
    """

    def __init__(
        self,
        dim: int,
        kernels: Sequence[int],
        *,
        gating: str = "linear",
        modulation: str = "multiply",
        aggregation: str = "hierarchical",
        global_context: bool = True,
        context_op: str = "dwconv",
        normalize_modulator: bool = False,
        postln: bool = False,
        proj_drop: float = 0.0,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.dim = dim
        self.kernel_sizes = tuple(kernels)
        self.focal_level = len(self.kernel_sizes)
        self.hierarchical_sum = aggregation == "hierarchical"
        self.multiply = modulation == "multiply"
        self.normalize_modulator = normalize_modulator
        n_local = self.focal_level if self.hierarchical_sum else min(self.focal_level, 1)
        self.num_aggregated = n_local + int(global_context)
        self.num_gates = 0 if gating == "none" else self.num_aggregated

        self.f = Linear(dim, 2 * dim + self.num_gates)
        self.focal_layers = nn.ModuleList([_context_layer(dim, k, context_op) for k in self.kernel_sizes])
        self.gates = GateActivation(gating) if self.num_gates else None
        self.global_context = GlobalContext() if global_context else None
        self.h = ChannelLinear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps) if postln else None
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = self.dim
        # split, not slicing: the backward of a split is one concatenation, while each slice's
        # backward zero-fills a tensor as large as f's output
        q, ctx, g_raw = torch.split(self.f(x), (C, C, self.num_gates), dim=-1)
        q, ctx = to_nchw(q), to_nchw(ctx)
        gates = self.gates(to_nchw(g_raw)) if self.gates is not None else None

        ctx_all = None
        g = 0
        last = self.focal_level - 1
        for lvl, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            if self.hierarchical_sum or lvl == last:
                term = ctx * gates[:, g : g + 1] if gates is not None else ctx
                ctx_all = term if ctx_all is None else ctx_all + term
                g += 1
        if self.global_context is not None:
            glob = self.global_context(ctx)
            term = glob * gates[:, g : g + 1] if gates is not None else glob
            ctx_all = term if ctx_all is None else ctx_all + term
        if self.normalize_modulator:
            ctx_all = ctx_all / self.num_aggregated

        modulator = self.h(ctx_all)
        out = q * modulator if self.multiply else q + modulator
        out = to_nhwc(out)
        if self.norm is not None:
            out = self.norm(out)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernels={list(self.kernel_sizes)}, aggregated={self.num_aggregated}"


class DWConvMixer(nn.Module):
    """The paper's "depth-wise ConvNet" variant (Table 12): ``y = q(GELU(h(z^L)))``.

    The same stack of depthwise convolutions as focal modulation, but the top level alone feeds a
    ``h -> GELU -> q`` chain: no gates, no aggregation, no element-wise modulation.
    """

    def __init__(self, dim: int, kernels: Sequence[int], *, postln: bool = False, proj_drop: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.kernel_sizes = tuple(kernels)
        self.f = Linear(dim, dim)
        self.focal_layers = nn.ModuleList([_context_layer(dim, k, "dwconv") for k in self.kernel_sizes])
        self.h = ChannelLinear(dim, dim)
        self.act = nn.GELU()
        self.q = Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps) if postln else None
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = to_nchw(self.f(x))
        for layer in self.focal_layers:
            ctx = layer(ctx)
        out = self.q(self.act(to_nhwc(self.h(ctx))))
        if self.norm is not None:
            out = self.norm(out)
        return self.proj_drop(self.proj(out))


class WindowAttention(nn.Module):
    """Swin-style (shifted) window multi-head self-attention with a relative position bias.

    Works on any map size: the map is zero-padded to whole windows and padded tokens are masked out;
    maps no larger than a window use one window and no shift (as Swin does). Input and output are
    channels-last ``(B, H, W, C)``.
    """

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
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shifted = shifted
        self.qkv = Linear(dim, 3 * dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.norm = nn.LayerNorm(dim, eps=eps) if postln else None
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._cache: dict = {}

    def _rel_index(self, ws: int, device: torch.device) -> torch.Tensor:
        key = ("idx", ws, device)
        if key not in self._cache:
            coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
            rel = coords[:, :, None] - coords[:, None, :] + (self.window_size - 1)
            self._cache[key] = (rel[0] * (2 * self.window_size - 1) + rel[1]).to(device)
        return self._cache[key]

    def _mask(self, H: int, W: int, ws: int, shift: int, device: torch.device) -> torch.Tensor | None:
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        if not shift and Hp == H and Wp == W:
            return None
        key = ("mask", H, W, ws, shift, device)
        if key not in self._cache:
            # class of every position of the (rolled) padded map along one axis: 0 normal,
            # 1 wrapped around by the shift, 2 padding. Tokens attend only within their class.
            def classes(n: int, n_pad: int) -> torch.Tensor:
                orig = (torch.arange(n_pad) + shift) % n_pad
                return torch.where(orig >= n, 2, torch.where(orig < shift, 1, 0))

            ids = classes(H, Hp)[:, None] * 3 + classes(W, Wp)[None, :]
            ids = ids.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
            same = ids[:, :, None] == ids[:, None, :]
            mask = torch.zeros(same.shape).masked_fill_(~same, float("-inf"))
            self._cache[key] = mask[:, None].to(device)  # (nW, 1, N, N)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        ws = min(self.window_size, max(H, W))
        shift = ws // 2 if self.shifted and min(H, W) > ws else 0
        Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
        if Hp != H or Wp != W:
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        nh, nw, N, hd = Hp // ws, Wp // ws, ws * ws, C // self.num_heads
        win = x.reshape(B, nh, ws, nw, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, nh * nw, N, C)
        qkv = self.qkv(win).reshape(B, nh * nw, N, 3, self.num_heads, hd).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)  # (B, nW, heads, N, hd)
        bias = self.relative_position_bias_table[self._rel_index(ws, x.device).reshape(-1)]
        bias = bias.reshape(N, N, self.num_heads).permute(2, 0, 1).to(q.dtype)  # (heads, N, N)
        mask = self._mask(H, W, ws, shift, x.device)
        attn_mask = bias if mask is None else bias + mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.permute(0, 1, 3, 2, 4).reshape(B, nh, nw, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        out = out[:, :H, :W]
        if self.norm is not None:
            out = self.norm(out)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, window={self.window_size}, shifted={self.shifted}"


class FocalNetBlock(nn.Module):
    """Pre-norm (default) or res-post-norm block: token mixer + MLP, each with LayerScale and DropPath.

    The input and output are NCHW-shaped (channels-last in memory); inside, the block works on the
    ``(B, H, W, C)`` view.
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        *,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_postln: bool = False,
        layerscale: float | None = None,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.modulation = mixer
        self.ls1 = LayerScale(dim, layerscale) if layerscale is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.ls2 = LayerScale(dim, layerscale) if layerscale is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_nhwc(x)
        if self.use_postln:
            x = x + self.drop_path1(self.ls1(self.norm1(self.modulation(x))))
            x = x + self.drop_path2(self.ls2(self.norm2(self.mlp(x))))
        else:
            x = x + self.drop_path1(self.ls1(self.modulation(self.norm1(x))))
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return to_nchw(x)


class PatchEmbed(nn.Module):
    """Strided convolution + LayerNorm: the stem (stride 4 or 16) and the downsamples (stride 2).

    ``overlap=True`` is the paper's overlapped embedding: k7 s4 p2 for the stem, k3 s2 p1 for the
    downsamples (official classification code and timm; the official detection copy pads the stem by 3).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, overlap: bool = False, eps: float = 1e-5):
        super().__init__()
        if overlap and stride == 4:
            k, p = 7, 2
        elif overlap and stride == 2:
            k, p = 3, 1
        else:
            k, p = stride, 0
        self.stride = stride
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size=k, stride=stride, padding=p)
        self.norm = nn.LayerNorm(out_chs, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(self.norm(to_nhwc(self.proj(x))))
