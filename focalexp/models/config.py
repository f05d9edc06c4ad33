"""`FocalNetConfig`: every knob of a FocalNet, validated, in one plain dataclass.

The knob names follow the paper and the official code (``focal_levels``, ``focal_windows``,
``focal_factor``, ``use_conv_embed``, ``use_layerscale``, ``use_postln``, ``use_postln_in_modulation``,
``normalize_modulator``). The ablation knobs that the paper studies but no implementation offers have
names that say what they do: ``kernel_sizes``, ``gating``, ``modulation``, ``aggregation``,
``global_context`` and ``token_mixer``.

A config is immutable and normalised at construction: per-stage knobs given as one value are expanded
to one value per stage, lists become tuples, and every value is checked. A bad value raises
:class:`~focalexp.errors.ConfigError` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError, closest, did_you_mean

MAX_BLOCKS = 1000  # blocks in all stages together; building 100,000 ran for minutes before anything failed

# the built-in token mixers (their classes: focalexp.models.mixers, which registers each under its name)
TOKEN_MIXERS = ("focal_modulation", "dwconv", "pooling", "window_attention")
GATINGS = ("linear", "none", "sigmoid", "softmax")
MODULATIONS = ("multiply", "add")
AGGREGATIONS = ("hierarchical", "top_only")
INITS = ("official", "timm")

# token mixers that aggregate gated focal levels (the knobs gating/modulation/aggregation/
# global_context apply to them only)
GATED_MIXERS = ("focal_modulation", "pooling")

# token mixers registered beyond the built-in ones (focalexp.models.mixers.register_mixer): name -> gated
_ADDED_MIXERS: dict[str, bool] = {}


def add_token_mixer(name: str, *, gated: bool) -> None:
    """Make ``token_mixer: name`` a valid value; called by ``focalexp.models.mixers.register_mixer``
    (this module stays importable without torch, so the names live here and the classes there)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"token mixer name: expected a non-empty string, got {name!r}")
    if name in TOKEN_MIXERS:
        if gated != (name in GATED_MIXERS):
            raise ValueError(f"token mixer '{name}' is built in with gated={name in GATED_MIXERS}")
        return
    _ADDED_MIXERS[name] = gated


def token_mixer_choices() -> tuple[str, ...]:
    """Every valid ``token_mixer``: the built-in ones, then those registered since."""
    return TOKEN_MIXERS + tuple(_ADDED_MIXERS)


def gated_mixers() -> tuple[str, ...]:
    """The token mixers the gating knobs (gating, modulation, aggregation, global_context) apply to."""
    return GATED_MIXERS + tuple(n for n, gated in _ADDED_MIXERS.items() if gated)


def patch_embed_geometry(stride: int, overlap: bool) -> tuple[int, int]:
    """``(kernel, padding)`` of a patch embedding of ``stride``: the overlapped one (``use_conv_embed``) is
    k7 p2 for the stride-4 stem and k3 p1 for the stride-2 downsamples, else kernel = stride, no padding.
    One definition for the module (:class:`~focalexp.models.layers.PatchEmbed`) and the MAC counter."""
    if overlap and stride == 4:
        return 7, 2
    if overlap and stride == 2:
        return 3, 1
    return stride, 0


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class FocalNetConfig:
    """Every knob of a FocalNet (official knobs, ablation knobs, backbone knobs).

    Per-stage knobs (``focal_levels``, ``focal_windows``, ``kernel_sizes``) accept one value for all
    stages or a list with one entry per stage.
    """

    # --- macro-architecture (official) ---
    depths: tuple[int, ...] = _help("blocks per stage; one entry for the isotropic layout", default=(2, 2, 6, 2))
    embed_dim: int = _help("channels of stage 1; stage i has embed_dim * 2**i", default=96)
    mlp_ratio: float = _help("MLP hidden width / channels", default=4.0)
    drop_rate: float = _help("dropout after the MLP and the mixer's output projection", default=0.0)
    drop_path_rate: float = _help("stochastic depth, linear from 0 to this over all blocks", default=0.1)
    patch_size: int = _help("stem stride (4 hierarchical, 16 isotropic)", default=4)
    in_chans: int = _help("input image channels", default=3)
    num_classes: int = _help("classifier outputs; 0 builds no head", default=1000)
    img_size: int = _help("native input resolution (used for FLOPs and timm's data config)", default=224)
    isotropic: bool = _help("one stage, no downsampling (the paper's FocalNet-*/16)", default=False)
    use_conv_embed: bool = _help("overlapped patch embedding: stem k7 s4, downsamples k3 s2", default=False)
    use_layerscale: bool = _help("LayerScale on both residual branches", default=False)
    layerscale_value: float = _help("LayerScale initial value", default=1e-4)
    use_postln: bool = _help("res-post-norm: norm on the branch output, before the residual add", default=False)
    use_postln_in_modulation: bool = _help("LayerNorm after q*modulator, before the output projection", default=False)
    normalize_modulator: bool = _help("divide the aggregated context by the number of aggregated levels", default=False)
    norm_eps: float = _help("LayerNorm epsilon", default=1e-5)

    # --- focal modulation (official) ---
    focal_levels: Any = _help("focal levels L per stage (0 = global context only)", default=2)
    focal_windows: Any = _help("kernel size of the first level per stage", default=3)
    focal_factor: int = _help("kernel growth per level: k_l = focal_factor*l + focal_window", default=2)

    # --- ablation knobs (paper Tables 12-14) ---
    kernel_sizes: Any = _help(
        "explicit kernel per level, e.g. [13] or [[3,5],[3,5],[3,5],[3,5]]; overrides focal_windows/focal_factor",
        default=None,
    )
    gating: str = _help("gates: linear (official, raw), none (plain sum), sigmoid, softmax (over levels)", default="linear")
    modulation: str = _help("how the modulator meets q: multiply (official) or add", default="multiply")
    aggregation: str = _help("hierarchical (all levels, official) or top_only (only the last level)", default="hierarchical")
    global_context: bool = _help("aggregate the global average-pooled context", default=True)
    token_mixer: str = _help(
        "focal_modulation, dwconv (depth-wise ConvNet), pooling (avg-pool aggregator), window_attention (Swin W-MSA)",
        default="focal_modulation",
    )
    window_size: int = _help("window_attention: window side", default=7)
    head_dim: int = _help("window_attention: channels per head", default=32)

    # --- engineering ---
    init: str = _help("weight init: official (trunc-normal Linear, default convs) or timm (trunc-normal all)", default="official")
    pad_input: bool = _help("zero-pad inputs to a multiple of the network stride instead of failing", default=False)
    use_checkpoint: bool = _help("activation (gradient) checkpointing per block", default=False)
    out_indices: Any = _help("backbone mode: forward returns the feature maps of these stages", default=None)

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name))

        depths = _int_tuple("depths", self.depths)
        if not depths or any(d < 1 for d in depths):
            raise ConfigError(f"expected a non-empty list of block counts >= 1, got {list(depths)}", key="depths")
        if sum(depths) > MAX_BLOCKS:
            raise ConfigError(f"{sum(depths):,} blocks in all; at most {MAX_BLOCKS:,} (FocalNet-H has 24)", key="depths")
        set_("depths", depths)
        n = len(depths)
        if self.isotropic and n != 1:
            raise ConfigError(f"the isotropic layout has one stage, but depths={list(depths)} has {n}", key="isotropic")

        _positive("embed_dim", self.embed_dim)
        _positive("patch_size", self.patch_size)
        _positive("in_chans", self.in_chans)
        _positive("img_size", self.img_size)
        _positive("window_size", self.window_size)
        _positive("head_dim", self.head_dim)
        if self.num_classes < 0:
            raise ConfigError(f"expected >= 0 (0 = no head), got {self.num_classes}", key="num_classes")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"expected > 0, got {self.mlp_ratio}", key="mlp_ratio")
        for k in ("drop_rate", "drop_path_rate"):
            v = getattr(self, k)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"expected a rate in [0, 1), got {v}", key=k)
        if not self.layerscale_value > 0:
            raise ConfigError(f"expected > 0, got {self.layerscale_value}", key="layerscale_value")
        if not self.norm_eps > 0:
            raise ConfigError(f"expected > 0, got {self.norm_eps}", key="norm_eps")

        if self.use_conv_embed and self.patch_size != 4:
            raise ConfigError(
                f"the overlapped stem (k7 s4) is defined for patch_size 4, not {self.patch_size}", key="use_conv_embed"
            )

        for k, choices in (
            ("gating", GATINGS),
            ("modulation", MODULATIONS),
            ("aggregation", AGGREGATIONS),
            ("token_mixer", token_mixer_choices()),
            ("init", INITS),
        ):
            v = getattr(self, k)
            if v not in choices:
                raise ConfigError(f"unknown value '{v}'{did_you_mean(v, choices)}; allowed: {', '.join(choices)}", key=k)

        levels = _per_stage("focal_levels", self.focal_levels, n)
        if any(v < 0 for v in levels):
            raise ConfigError(f"expected levels >= 0, got {list(levels)}", key="focal_levels")
        windows = _per_stage("focal_windows", self.focal_windows, n)
        if any(v < 1 for v in windows):
            raise ConfigError(f"expected window sizes >= 1, got {list(windows)}", key="focal_windows")
        if self.focal_factor < 0:
            raise ConfigError(f"expected >= 0, got {self.focal_factor}", key="focal_factor")
        set_("focal_levels", levels)
        set_("focal_windows", windows)

        if self.kernel_sizes is not None:
            ks = _kernel_lists(self.kernel_sizes, n)
            for i, (stage_ks, lv) in enumerate(zip(ks, levels)):
                if len(stage_ks) != lv:
                    raise ConfigError(
                        f"stage {i} lists {len(stage_ks)} kernel(s) {list(stage_ks)} but focal_levels "
                        f"is {lv}; give one kernel per level (or leave focal_levels unset to derive it)", key="kernel_sizes"
                    )
            set_("kernel_sizes", ks)
        for i in range(n):
            for k in self.stage_kernels(i):
                if k < 1 or k % 2 == 0:
                    src = "kernel_sizes" if self.kernel_sizes is not None else "focal_windows/focal_factor"
                    raise ConfigError(
                        f"stage {i} gets kernel {k}; kernels must be odd and >= 1 so that maps keep their size "
                        f"(kernels {list(self.stage_kernels(i))})", key=src
                    )

        self._check_mixer_knobs()

        if self.out_indices is not None:
            oi = _int_tuple("out_indices", self.out_indices)
            bad = [i for i in oi if not 0 <= i < n]
            if bad or len(set(oi)) != len(oi) or not oi:
                raise ConfigError(f"expected distinct stage indices in 0..{n - 1}, got {list(oi)}", key="out_indices")
            set_("out_indices", tuple(sorted(oi)))

        if not self.pad_input and self.img_size % self.stride:
            raise ConfigError(
                f"{self.img_size} is not a multiple of the network stride {self.stride}; "
                f"use a multiple (e.g. {self.stride * max(1, round(self.img_size / self.stride))}) or pad_input=true", key="img_size"
            )

    def _check_mixer_knobs(self) -> None:
        mixer = self.token_mixer
        if mixer == "window_attention":
            for i, dim in enumerate(self.stage_dims):
                if dim % self.head_dim:
                    raise ConfigError(
                        f"stage {i} has {dim} channels, not a multiple of head_dim={self.head_dim}", key="head_dim"
                    )
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        gated = gated_mixers()
        if mixer not in gated:
            for k in ("gating", "modulation", "aggregation", "global_context"):
                if getattr(self, k) != defaults[k]:
                    raise ConfigError(
                        f"applies to token_mixer {' or '.join(gated)}, not '{mixer}' "
                        f"(leave {k} at '{defaults[k]}')", key=k
                    )
        if mixer == "dwconv" and min(self.focal_levels) < 1:
            raise ConfigError("token_mixer 'dwconv' stacks the focal levels' convolutions and needs >= 1 level", key="focal_levels")
        if mixer in gated:
            for i in range(self.num_stages):
                lv = self.focal_levels[i]
                if lv == 0 and not self.global_context:
                    raise ConfigError(
                        f"stage {i} has 0 levels and global_context is false: nothing is left to aggregate", key="focal_levels"
                    )
                if self.aggregation == "top_only" and lv == 0:
                    raise ConfigError(f"'top_only' needs focal_levels >= 1 (stage {i} has 0)", key="aggregation")
                if self.gating == "softmax" and self.num_aggregated(i) < 2:
                    raise ConfigError(
                        f"'softmax' over levels needs >= 2 aggregated levels; stage {i} aggregates "
                        f"{self.num_aggregated(i)} (use linear, sigmoid or none)", key="gating"
                    )

    # ------------------------------------------------------------------ derived values
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return tuple(self.patch_size * 2**i for i in range(self.num_stages))

    @property
    def stride(self) -> int:
        """Total stride of the network (input sizes must be multiples of it unless pad_input)."""
        return self.stage_strides[-1]

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    def stage_kernels(self, i: int) -> tuple[int, ...]:
        """Kernel size of every focal level of stage ``i``."""
        if self.kernel_sizes is not None:
            return tuple(self.kernel_sizes[i])
        return tuple(self.focal_factor * k + self.focal_windows[i] for k in range(self.focal_levels[i]))

    def receptive_field(self, i: int) -> int:
        """Receptive field of the top focal level of stage ``i`` in tokens: ``1 + sum(k - 1)``."""
        return 1 + sum(k - 1 for k in self.stage_kernels(i))

    def num_aggregated(self, i: int) -> int:
        """Number of contexts summed into the modulator in stage ``i`` (focal levels + global)."""
        lv = self.focal_levels[i]
        local = lv if self.aggregation == "hierarchical" else min(lv, 1)
        return local + int(self.global_context)

    def num_gates(self, i: int) -> int:
        """Number of gate channels the input projection ``f`` produces in stage ``i``."""
        return 0 if self.gating == "none" else self.num_aggregated(i)

    def num_heads(self, i: int) -> int:
        return self.stage_dims[i] // self.head_dim

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for YAML/JSON."""

        def plain(v: Any) -> Any:
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FocalNetConfig":
        """Build from a mapping; unknown keys are errors naming the closest valid key."""
        _check_keys(d, cls.field_names())
        return cls(**dict(d))

    def replace(self, **overrides: Any) -> "FocalNetConfig":
        """A copy with ``overrides`` applied and validated.

        ``kernel_sizes`` without ``focal_levels`` sets the levels to match; changing ``focal_levels``,
        ``focal_windows`` or ``focal_factor`` without ``kernel_sizes`` drops explicit kernels inherited
        from the base, so the kernels follow the new window/factor.
        """
        _check_keys(overrides, self.field_names())
        overrides = dict(overrides)
        if overrides.get("kernel_sizes") is not None and "focal_levels" not in overrides:
            ks = _kernel_lists(overrides["kernel_sizes"], self.num_stages if "depths" not in overrides
                               else len(_int_tuple("depths", overrides["depths"])))
            overrides["focal_levels"] = tuple(len(k) for k in ks)
        if self.kernel_sizes is not None and "kernel_sizes" not in overrides and (
            {"focal_levels", "focal_windows", "focal_factor"} & set(overrides)
        ):
            overrides["kernel_sizes"] = None
        if "depths" in overrides:
            # per-stage values of the base no longer fit a different number of stages: collapse
            # them to one value when they are uniform
            n_new = len(_int_tuple("depths", overrides["depths"]))
            if n_new != self.num_stages:
                for k in ("focal_levels", "focal_windows"):
                    if k not in overrides:
                        vals = set(getattr(self, k))
                        if len(vals) != 1:
                            raise ConfigError(
                                f"the base has per-stage values {list(getattr(self, k))} that do not fit "
                                f"depths={list(_int_tuple('depths', overrides['depths']))}; set {k} too", key=k
                            )
                        overrides[k] = vals.pop()
                if self.kernel_sizes is not None and "kernel_sizes" not in overrides:
                    if len(set(self.kernel_sizes)) != 1:
                        raise ConfigError("per-stage kernels of the base do not fit the new depths; set kernel_sizes too", key="kernel_sizes")
                    overrides["kernel_sizes"] = list(self.kernel_sizes[0])
                if self.out_indices is not None and "out_indices" not in overrides:
                    overrides["out_indices"] = None
        return dataclasses.replace(self, **overrides)

    def describe(self) -> str:
        """One line: the knobs that differ from the defaults."""
        base = FocalNetConfig()
        diffs = [f"{k}={v}" for k, v in self.to_dict().items() if v != base.to_dict()[k]]
        return ", ".join(diffs) if diffs else "(defaults)"


# ---------------------------------------------------------------------------- helpers
_BOOL_FIELDS = {
    "isotropic", "use_conv_embed", "use_layerscale", "use_postln", "use_postln_in_modulation",
    "normalize_modulator", "global_context", "pad_input", "use_checkpoint",
}
_INT_FIELDS = {"embed_dim", "patch_size", "in_chans", "num_classes", "img_size", "focal_factor", "window_size", "head_dim"}
_FLOAT_FIELDS = {"mlp_ratio", "drop_rate", "drop_path_rate", "layerscale_value", "norm_eps"}
_STR_FIELDS = {"gating", "modulation", "aggregation", "token_mixer", "init"}


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(v), type(v).__name__)


def _check_type(name: str, v: Any) -> None:
    if name in _BOOL_FIELDS and not isinstance(v, bool):
        raise ConfigError(f"expected true or false, got {v!r} ({_type_name(v)})", key=name)
    if name in _INT_FIELDS and (isinstance(v, bool) or not isinstance(v, int)):
        raise ConfigError(f"expected an integer, got {v!r} ({_type_name(v)})", key=name)
    if name in _FLOAT_FIELDS and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
        raise ConfigError(f"expected a number, got {v!r} ({_type_name(v)})", key=name)
    if name in _STR_FIELDS and not isinstance(v, str):
        raise ConfigError(f"expected a string, got {v!r} ({_type_name(v)})", key=name)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_tuple(name: str, v: Any) -> tuple[int, ...]:
    if _is_int(v):
        return (v,)
    if isinstance(v, (list, tuple)) and all(_is_int(x) for x in v):
        return tuple(v)
    raise ConfigError(f"expected a list of integers, got {v!r}", key=name)


def _per_stage(name: str, v: Any, n: int) -> tuple[int, ...]:
    if _is_int(v):
        return (v,) * n
    if isinstance(v, (list, tuple)) and all(_is_int(x) for x in v):
        if len(v) == 1 and n > 1:
            return tuple(v) * n
        if len(v) != n:
            raise ConfigError(f"expected one value or {n} (one per stage), got {len(v)}: {list(v)}", key=name)
        return tuple(v)
    raise ConfigError(f"expected an integer or a list of {n} integers (one per stage), got {v!r}", key=name)


def _kernel_lists(v: Any, n: int) -> tuple[tuple[int, ...], ...]:
    msg = f"expected a list of kernels (e.g. [13] or [3, 5]) or one such list per stage ({n}), got {v!r}"
    if _is_int(v):
        return ((v,),) * n
    if not isinstance(v, (list, tuple)):
        raise ConfigError(msg, key="kernel_sizes")
    if all(_is_int(x) for x in v):  # one list for every stage
        return (tuple(v),) * n
    if all(isinstance(x, (list, tuple)) and all(_is_int(k) for k in x) for x in v):
        if len(v) != n:
            raise ConfigError(f"expected one kernel list per stage ({n}), got {len(v)}", key="kernel_sizes")
        return tuple(tuple(x) for x in v)
    raise ConfigError(msg, key="kernel_sizes")


def _positive(name: str, v: int) -> None:
    if v < 1:
        raise ConfigError(f"expected an integer >= 1, got {v}", key=name)


def _check_keys(d: Mapping[str, Any], valid: list[str]) -> None:
    for k in d:
        if k not in valid:
            hits = closest(k, valid, n=1)
            raise ConfigError(key=k, unknown=True, suggestion=hits[0] if hits else None, noun="model key")
