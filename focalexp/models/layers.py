"""Building blocks of a FocalNet around its token mixer: the block, the MLP, LayerScale, patch embedding.

The token mixers live in :mod:`focalexp.models.mixers` (one class each, in a registry keyed by
``token_mixer``), the CPU fast path of the projections in :mod:`focalexp.models.fastpath`, the tensor
layout (NCHW-shaped, channels-last in memory) in :mod:`focalexp.models.layout`; their public names are
re-exported here for code that imported them from this module.
"""

import torch
import torch.nn as nn
from timm.layers import DropPath

from .config import patch_embed_geometry
from .fastpath import (
    FAST_MIN_ROWS,
    ChannelLinear,
    Linear,
    fast_path_enabled,
    linear,
    reference_path,
    set_fast_path,
)
from .layout import to_nchw, to_nhwc
from .mixers import DWConvMixer, FocalModulation, GateActivation, GlobalContext, PoolingModulation, TokenMixer, WindowAttention

__all__ = [
    "LayerScale", "Mlp", "FocalNetBlock", "PatchEmbed",
    # re-exported
    "FAST_MIN_ROWS", "ChannelLinear", "Linear", "fast_path_enabled", "linear", "reference_path", "set_fast_path",
    "to_nchw", "to_nhwc", "TokenMixer", "FocalModulation", "PoolingModulation", "DWConvMixer", "WindowAttention",
    "GateActivation", "GlobalContext",
]


class LayerScale(nn.Module):
    """Per-channel scale on a channels-last tensor (official ``gamma_1/2``, timm ``ls1/2.gamma``)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, on a channels-last tensor (official layout)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._fuse_gelu():
            h = linear(x, self.fc1.weight, self.fc1.bias, "gelu")  # GELU fused on the fast path
        else:
            h = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(h))

    @torch.jit.unused
    def _fuse_gelu(self) -> bool:
        # eval, exact GELU, and nobody hooked fc1 or act (a hook must see their own outputs)
        return (not self.training and self.act.approximate == "none" and not self.fc1._forward_hooks
                and not self.fc1._forward_pre_hooks and not self.act._forward_hooks and not self.act._forward_pre_hooks)


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
        k, p = patch_embed_geometry(stride, overlap)
        self.stride = stride
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size=k, stride=stride, padding=p)
        self.norm = nn.LayerNorm(out_chs, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(self.norm(to_nhwc(self.proj(x))))
