"""The FocalNet model: one class, built from one :class:`FocalNetConfig`."""

import contextlib
import threading
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import trunc_normal_
from timm.models import FeatureInfo
from timm.models._features import feature_take_indices

from ..errors import ConfigError
from .capture import is_capturing, is_fx_tracing
from .config import FocalNetConfig
from .fastpath import ChannelLinear
from .footprint import check_model_size
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
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    @torch.jit.unused
    def run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One of this stage's blocks, checkpointed as the stage would (block-level features)."""
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)


class FocalNet(nn.Module):
    """Focal Modulation Network (Yang et al., NeurIPS 2022), every variant from one config.

    ``forward(x)`` returns logits, or, when ``config.out_indices`` is set (backbone mode), the list of
    NCHW feature maps of those stages (channels and strides in :attr:`feature_channels`,
    :attr:`feature_strides` and :attr:`feature_info`).

    The model interface is timm's: ``forward_features`` (the normalised NCHW map), ``forward_head``
    (``pre_logits``), ``forward_intermediates`` / ``prune_intermediate_layers`` over the model's feature
    levels, ``reset_classifier(num_classes, global_pool)``, ``group_matcher``, ``set_grad_checkpointing``,
    ``num_features`` / ``head_hidden_size`` and ``feature_info`` (a :class:`timm.models.FeatureInfo`).
    Feature levels are the stages of a hierarchical model and the blocks of an isotropic (one-stage)
    model, as timm's ViTs count theirs.

    Parameter names: ``stem``, ``stages.{i}.downsample``, ``stages.{i}.blocks.{j}.{norm1, modulation,
    ls1, norm2, mlp, ls2}``, ``norm``, ``head``. Official and timm checkpoints convert to them
    (:mod:`focalexp.models.checkpoint`). The model keeps no analysis state: read gates, contexts and
    the modulator with forward hooks (see :mod:`focalexp.models.mixers`).
    """

    # properties TorchScript must not compile (they read the Python config)
    __jit_unused_properties__ = ["stride", "feature_channels", "feature_strides"]

    def __init__(self, config: FocalNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else FocalNetConfig()
        check_model_size(cfg)  # > 3 B parameters: refused before torch tries to allocate them
        self.config = cfg
        dims = cfg.stage_dims
        self.num_classes = cfg.num_classes
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = "avg"
        self.block_levels = len(cfg.depths) == 1  # isotropic: one feature level per block
        self._pad_input = bool(cfg.pad_input)
        self._input_stride = int(cfg.stride)

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
        self.stages = nn.Sequential(*stages)  # same state-dict keys as a ModuleList; timm's wrappers can run it
        if self.block_levels:
            levels = [dict(num_chs=dims[0], reduction=cfg.stride, module=f"stages.0.blocks.{j}")
                      for j in range(cfg.depths[0])]
        else:
            levels = [dict(num_chs=d, reduction=r, module=f"stages.{i}")
                      for i, (d, r) in enumerate(zip(dims, cfg.stage_strides))]
        self.feature_info = FeatureInfo(levels, self._stage_levels(cfg.out_indices))
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

    # ------------------------------------------------------------------ feature levels
    def _stage_levels(self, stages: Optional[Sequence[int]]) -> Tuple[int, ...]:
        """Feature levels of the given stages (all levels when None): a stage's last block when levels are blocks."""
        if stages is None:
            return tuple(range(self.config.depths[0] if self.block_levels else len(self.config.depths)))
        if self.block_levels:
            return tuple(self.config.depths[0] - 1 for _ in stages)
        return tuple(stages)

    @torch.jit.ignore
    def num_feature_levels(self) -> int:
        """How many feature levels the model has now (fewer after :meth:`prune_intermediate_layers`)."""
        return len(self.stages[0].blocks) if self.block_levels else len(self.stages)

    # ------------------------------------------------------------------ API
    @property
    def stride(self) -> int:
        return self.config.stride

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the feature maps backbone mode returns (every stage's, outside backbone mode)."""
        return [self.config.stage_dims[i] for i in (self.config.out_indices or range(self.config.num_stages))]

    @property
    def feature_strides(self) -> list[int]:
        return [self.config.stage_strides[i] for i in (self.config.out_indices or range(self.config.num_stages))]

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for timm's layer-wise LR decay (``timm.optim``): stem, then stages/blocks, then norm."""
        if coarse:
            blocks = [(r"^stages\.(\d+)", None), (r"^norm", (99999,))]
        else:
            blocks = [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                      (r"^norm", (99999,))]
        return dict(stem=r"^stem", blocks=blocks)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head with ``num_classes`` outputs (0: none). ``global_pool`` ``'avg'`` (default) or ``''``:
        no pooling, so ``forward`` returns the NCHW map (``num_classes=0``) or NCHW per-position logits."""
        if not hasattr(self, "head"):
            raise ConfigError("reset_classifier: a backbone (out_indices set) has no classifier")
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ConfigError(f"global_pool: FocalNet pools by average ('avg') or not at all (''), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizer factory exempts from weight decay (besides every 1-D tensor:
        norms, biases, LayerScale gammas): the relative position bias tables of window attention."""
        return {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        """Parameters that usually get no weight decay: LayerScale gammas and the position bias."""
        return {"gamma", "relative_position_bias_table"}

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ConfigError(f"input: expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_chans:
            raise ConfigError(f"input: expected {self.config.in_chans} channels (in_chans), got {x.shape[1]}")
        H, W = x.shape[-2:]
        s = self.stride
        if (H % s or W % s) and not self.config.pad_input:
            raise ConfigError(
                f"input: {H}x{W} is not a multiple of the network stride {s}; resize/crop to a multiple "
                f"or build the model with pad_input=true"
            )

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        if not is_capturing():  # the checks read shapes in Python: a graph (fx, script, trace) has none to read
            self._check_input(x)
        if self._pad_input:
            s = self._input_stride
            H, W = x.shape[-2], x.shape[-1]
            if is_fx_tracing() or H % s != 0 or W % s != 0:  # fx: sizes are Proxies, pad (maybe by 0)
                x = F.pad(x, [0, (s - W % s) % s, 0, (s - H % s) % s])
        return x.contiguous(memory_format=torch.channels_last)

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The NCHW feature maps of the levels in ``indices``, with timm's semantics.

        Args:
            indices: ``None`` all levels, an int ``n`` the last ``n``, a list the levels named (negative
                from the end). Levels are stages, or blocks for an isotropic model (:attr:`feature_info`).
            norm: apply the final LayerNorm to the last level's map (as timm does).
            stop_early: stop after the last level taken (the returned final map is then that level's).
            output_fmt: ``'NCHW'`` only.
            intermediates_only: return the list of maps alone.

        Returns:
            ``(final, intermediates)``: ``final`` as :meth:`forward_features` returns it when every
            level ran, and the list of maps; or the list alone with ``intermediates_only``.
        """
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt: FocalNet's intermediates are NCHW only, got {output_fmt!r}")
        num_levels = self.num_feature_levels()
        take, max_index = self._take_indices(num_levels, indices)
        x = self.pos_drop(self.stem(self._prepare_input(x)))
        if self.block_levels:
            stage = self.stages[0]
            x = stage.downsample(x)
            units = [lambda t, b=b: stage.run_block(b, t) for b in stage.blocks]
        else:
            units = list(self.stages)
        if stop_early:
            units = units[: max_index + 1]
        last = num_levels - 1
        has_norm = hasattr(self, "norm")
        intermediates: list[torch.Tensor] = []
        idx = -1
        for idx, unit in enumerate(units):
            x = unit(x)
            if idx in take:
                intermediates.append(self._norm_nchw(x) if norm and idx == last and has_norm else x)
        if intermediates_only:
            return intermediates
        if idx == last and has_norm:
            x = self._norm_nchw(x)
        return x, intermediates

    @staticmethod
    def _take_indices(num_levels: int, indices: Optional[Union[int, List[int]]]) -> Tuple[List[int], int]:
        """timm's feature_take_indices, its range errors as one-line ConfigErrors."""
        if isinstance(indices, (list, tuple)) and not indices:
            raise ConfigError("indices: expected at least one feature level")
        try:
            return feature_take_indices(num_levels, indices)
        except AssertionError as e:
            raise ConfigError(f"indices: {e}") from None

    def _norm_nchw(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(self.norm(to_nhwc(x)))

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: Union[int, List[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> List[int]:
        """Drop the levels after the last one in ``indices`` (and the final norm / the head); returns the
        absolute level indices, for :meth:`forward_intermediates`."""
        take, max_index = self._take_indices(self.num_feature_levels(), indices)
        if self.block_levels:
            self.stages[0].blocks = self.stages[0].blocks[: max_index + 1]
        else:
            self.stages = self.stages[: max_index + 1]
        if prune_norm and hasattr(self, "norm"):
            self.norm = nn.Identity()
        if prune_head and hasattr(self, "head"):
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final normalised feature map, NCHW."""
        x = self.pos_drop(self.stem(self._prepare_input(x)))
        x = self.stages(x)
        if hasattr(self, "norm"):
            x = self._norm_nchw(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average-pool and classify (``pre_logits``: the pooled features). Unpooled (``global_pool=''``):
        the map itself, or the head applied at every position (NCHW logits)."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
            return x if pre_logits else self.head(x)
        if pre_logits:
            return x
        return to_nchw(self.head(to_nhwc(x)))

    @torch.jit.ignore
    def _backbone_forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.forward_intermediates(x, list(self.feature_info.out_indices), stop_early=True,
                                          intermediates_only=True)

    def forward(self, x: torch.Tensor):
        if hasattr(self, "head"):
            return self.forward_head(self.forward_features(x))
        return self._backbone_forward(x)  # backbone mode (config.out_indices)
