"""The FocalNet model: one class, built from one :class:`FocalNetConfig`."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import trunc_normal_

from ..errors import ConfigError
from .config import FocalNetConfig
from .fastpath import ChannelLinear
from .layers import FocalNetBlock, PatchEmbed
from .layout import to_nchw, to_nhwc
from .mixers import build_mixer


_INIT = threading.local()


@contextlib.contextmanager
def skip_weight_init() -> Iterator[None]:
    """Build FocalNets without their weight init (trunc-normal etc.): for shapes only, e.g. on the meta
    device to validate a config or count FLOPs, where the init is most of the cost and means nothing."""
    before = getattr(_INIT, "skip", False)
    _INIT.skip = True
    try:
        yield
    finally:
        _INIT.skip = before


def model_for_counting(cfg: FocalNetConfig) -> "FocalNet":
    """A FocalNet with zeroed weights on the CPU, in eval mode, built without running its (slow, for 400 M
    params) init: for counting FLOPs and activations, where the values mean nothing."""
    with torch.device("meta"), skip_weight_init():
        m = FocalNet(cfg)
    m = m.to_empty(device="cpu")
    with torch.no_grad():
        for t in list(m.parameters()) + list(m.buffers()):
            t.zero_()
    return m.eval()


class FocalNetStage(nn.Module):
    """Optional downsample (at the start, as in timm) followed by the blocks of one stage."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


class FocalNet(nn.Module):
    """Focal Modulation Network (Yang et al., NeurIPS 2022), every variant from one config.

    ``forward(x)`` returns logits, or, when ``config.out_indices`` is set (backbone mode), the list of
    NCHW feature maps of those stages (channels and strides in :attr:`feature_info`).

    Parameter names: ``stem``, ``stages.{i}.downsample``, ``stages.{i}.blocks.{j}.{norm1, modulation,
    ls1, norm2, mlp, ls2}``, ``norm``, ``head``. Official and timm checkpoints convert to them
    (:mod:`focalexp.models.checkpoint`). The model keeps no analysis state: read gates, contexts and
    the modulator with forward hooks (see :mod:`focalexp.models.mixers`).
    """

    def __init__(self, config: FocalNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else FocalNetConfig()
        self.config = cfg
        dims = cfg.stage_dims
        self.num_classes = cfg.num_classes
        self.num_features = dims[-1]

        self.stem = PatchEmbed(cfg.in_chans, dims[0], cfg.patch_size, overlap=cfg.use_conv_embed, eps=cfg.norm_eps)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths), device="cpu").tolist()  # official rule
        layerscale = cfg.layerscale_value if cfg.use_layerscale else None
        stages, first = [], 0
        for i, depth in enumerate(cfg.depths):
            down = (
                PatchEmbed(dims[i - 1], dims[i], 2, overlap=cfg.use_conv_embed, eps=cfg.norm_eps) if i > 0 else None
            )
            blocks = [
                FocalNetBlock(
                    dims[i],
                    build_mixer(cfg, i, j),
                    mlp_ratio=cfg.mlp_ratio,
                    drop=cfg.drop_rate,
                    drop_path=dpr[first + j],
                    use_postln=cfg.use_postln,
                    layerscale=layerscale,
                    eps=cfg.norm_eps,
                )
                for j in range(depth)
            ]
            first += depth
            stages.append(FocalNetStage(down, blocks))
        self.stages = nn.ModuleList(stages)
        self.feature_info = [
            dict(num_chs=d, reduction=s, module=f"stages.{i}") for i, (d, s) in enumerate(zip(dims, cfg.stage_strides))
        ]
        if cfg.out_indices is None:
            self.norm = nn.LayerNorm(self.num_features, eps=cfg.norm_eps)
            self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.set_grad_checkpointing(cfg.use_checkpoint)
        if not getattr(_INIT, "skip", False):
            self.apply(self._init_weights)

    # ------------------------------------------------------------------ init
    def _init_weights(self, m: nn.Module) -> None:
        timm_init = self.config.init == "timm"
        if isinstance(m, nn.Linear) and (timm_init or not isinstance(m, ChannelLinear)):
            # official: trunc-normal on Linear layers; its h is a 1x1 Conv2d left at PyTorch's default,
            # which is the same distribution nn.Linear's default draws from, so ChannelLinear keeps it
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d) and timm_init:
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ API
    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def feature_channels(self) -> list[int]:
        idx = self.config.out_indices or range(len(self.stages))
        return [self.feature_info[i]["num_chs"] for i in idx]

    @property
    def feature_strides(self) -> list[int]:
        idx = self.config.out_indices or range(len(self.stages))
        return [self.feature_info[i]["reduction"] for i in idx]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizer factory exempts from weight decay (besides every 1-D tensor:
        norms, biases, LayerScale gammas): the relative position bias tables of window attention."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    def no_weight_decay_keywords(self) -> set[str]:
        """Parameters that usually get no weight decay: LayerScale gammas and the position bias."""
        return {"gamma", "relative_position_bias_table"}

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ConfigError(f"input: expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_chans:
            raise ConfigError(f"input: expected {self.config.in_chans} channels (in_chans), got {x.shape[1]}")
        H, W = x.shape[-2:]
        s = self.stride
        if H % s or W % s:
            if not self.config.pad_input:
                raise ConfigError(
                    f"input: {H}x{W} is not a multiple of the network stride {s}; resize/crop to a multiple "
                    f"or build the model with pad_input=true"
                )
            x = F.pad(x, (0, -W % s, 0, -H % s))
        return x.contiguous(memory_format=torch.channels_last)

    def forward_intermediates(
        self, x: torch.Tensor, indices: Sequence[int] | None = None, norm: bool = False
    ) -> list[torch.Tensor]:
        """NCHW outputs of the stages in ``indices`` (all stages by default).

        ``norm=True`` applies the final LayerNorm to the last stage's map (as timm does).
        """
        want = set(range(len(self.stages)) if indices is None else indices)
        if not want:
            return []
        x = self.pos_drop(self.stem(self._prepare_input(x)))
        outs = []
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in want:
                if norm and i == last and hasattr(self, "norm"):
                    outs.append(to_nchw(self.norm(to_nhwc(x))))
                else:
                    outs.append(x)
            if i >= max(want):
                break
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final normalised feature map, NCHW."""
        x = self.pos_drop(self.stem(self._prepare_input(x)))
        for stage in self.stages:
            x = stage(x)
        if hasattr(self, "norm"):
            x = to_nchw(self.norm(to_nhwc(x)))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor):
        if self.config.out_indices is not None:
            return self.forward_intermediates(x, self.config.out_indices)
        return self.forward_head(self.forward_features(x))
