"""FLOPs of any FocalNet (or any model): fvcore in the papers' convention, and what it leaves out.

Conventions, all reported side by side (``FlopsReport``):

``gmacs``
    The papers' "FLOPs": fvcore's count, one fused multiply-add = 1, convolutions/linears/matmuls plus
    ``5 x numel`` per affine LayerNorm; element-wise ops (gating multiplies, GELU, means, adds) are not
    counted. This is what FocalNet's README/paper and timm's benchmark CSVs report. focalexp adds one
    handle to fvcore's defaults: ``scaled_dot_product_attention`` (its two matmuls), which fvcore leaves
    out (so window attention is counted the way Swin counts it).
``gmacs_elementwise``
    The same plus one op per element for the element-wise ops (``mul``, ``add``, ``gelu``, ``sigmoid``,
    ``softmax``, ...), ``numel(input)`` for means, ``k*k`` per output for average pooling.
``flop_counter_gmacs``
    A cross-check with ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per MAC, so it
    is halved): matmuls and convolutions only, no norms.
``official_gflops``
    The official repository's analytic ``flops()`` formula (FocalNet's ``model.flops()``), generalised to
    the gating/aggregation knobs; ``None`` for the token mixers the official code does not have.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..models.config import FocalNetConfig
from ..models.focalnet import FocalNet, model_for_counting

# fvcore's default handles, in its simplified op names (what the papers count)
PAPER_OPS = {
    "addmm", "bmm", "conv", "_convolution", "einsum", "matmul", "mm", "linear", "batch_norm", "group_norm",
    "layer_norm", "instance_norm", "upsample_nearest2d", "upsample_bilinear2d", "adaptive_avg_pool2d",
    "grid_sampler", "scaled_dot_product_attention",
}
# shape / data-movement ops that cost no arithmetic: never reported as "unsupported"
_FREE_OPS = {
    "roll", "constant_pad_nd", "pad", "unbind", "masked_fill", "index", "stack", "meshgrid", "arange",
    "where", "remainder", "ge", "lt", "eq", "ne", "contiguous", "clone", "copy_", "expand", "repeat",
    "split_with_sizes", "unflatten", "alias", "detach", "new_zeros", "lift_fresh", "zero_", "fill_",
}

PAPER_CONVENTION = (
    "GMACs (fvcore, the papers' 'FLOPs'): 1 multiply-add = 1; conv/linear/matmul MACs + 5/elem LayerNorm; "
    "element-wise ops not counted"
)


def _shape(v: Any) -> list[int] | None:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(v)


def _numel(v: Any) -> int:
    s = _shape(v)
    return math.prod(s) if s else 0


def _sdpa_handle(inputs: list, outputs: list) -> int:
    # q (..., L, E), k (..., S, E), v (..., S, Ev): q@k^T is L*S*E MACs, attn@v is L*S*Ev, per batch
    q, k, v = (_shape(inputs[i]) for i in range(3))
    batch = math.prod(q[:-2])
    L, E, S, Ev = q[-2], q[-1], k[-2], v[-1]
    return batch * L * S * (E + Ev)


def _out_elems(inputs: list, outputs: list) -> int:
    return _numel(outputs[0])


def _in_elems(inputs: list, outputs: list) -> int:
    return _numel(inputs[0])


def _avg_pool_handle(inputs: list, outputs: list) -> int:
    try:
        k = inputs[1].toIValue()
        area = math.prod(k) if isinstance(k, (list, tuple)) else k * k
    except Exception:  # pragma: no cover - defensive: unknown signature
        area = 1
    return _numel(outputs[0]) * area


ELEMENTWISE_HANDLES = {
    **{f"aten::{op}": _out_elems for op in (
        "mul", "mul_", "add", "add_", "sub", "rsub", "div", "div_", "gelu", "relu", "silu", "sigmoid",
        "tanh", "softmax", "exp", "neg", "sqrt", "rsqrt", "pow", "abs",
    )},
    "aten::mean": _in_elems,
    "aten::sum": _in_elems,
    "aten::adaptive_avg_pool1d": _in_elems,
    "aten::avg_pool2d": _avg_pool_handle,
}


@dataclass
class FlopsReport:
    model: str
    img_size: int
    params: int
    gmacs: float
    gmacs_elementwise: float
    flop_counter_gmacs: float | None
    official_gflops: float | None
    convention: str = PAPER_CONVENTION
    by_stage: dict[str, float] = field(default_factory=dict)  # GMACs, papers' convention
    by_operator: dict[str, float] = field(default_factory=dict)  # GMACs incl. element-wise ops
    by_module: dict[str, float] = field(default_factory=dict)  # GMACs, papers' convention, to --depth
    not_counted: dict[str, float] = field(default_factory=dict)  # element-wise ops the papers leave out (GMACs)
    unsupported: dict[str, int] = field(default_factory=dict)  # ops no handle counts: op -> occurrences

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (the papers' and timm's ``param_count``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def official_flops(cfg: FocalNetConfig, img_size: int | None = None, num_classes: int | None = None) -> int | None:
    """The official repo's analytic ``FocalNet.flops()`` for this config (an integer count of MACs).

    Reproduces its conventions exactly: every patch embedding is counted as if its kernel were the patch
    size (so overlapped embedding adds nothing), each focal level adds ``N*(k^2+1)*C``, the global
    gate ``N*C``, LayerNorms ``N*C`` each, plus Swin's legacy ``C*H0*W0/2^stages`` term and the head.
    Returns ``None`` for token mixers the official code does not have.
    """
    if cfg.token_mixer != "focal_modulation":
        return None
    img = cfg.img_size if img_size is None else img_size
    ncls = cfg.num_classes if num_classes is None else num_classes
    res0 = img // cfg.patch_size
    dims = cfg.stage_dims
    total = res0 * res0 * dims[0] * cfg.in_chans * cfg.patch_size**2 + res0 * res0 * dims[0]
    for i, depth in enumerate(cfg.depths):
        res = res0 // 2**i
        N, C = res * res, dims[i]
        G = cfg.num_gates(i)
        mod = N * C * (2 * C + G)
        mod += sum(N * (k * k + 1) * C for k in cfg.stage_kernels(i))
        if cfg.global_context:
            mod += N * C
        mod += N * C * (C + 1) + N * C * C
        block = C * N + mod + int(2 * N * C * C * cfg.mlp_ratio) + C * N
        total += depth * block
        if i < cfg.num_stages - 1:
            ro = res // 2
            total += ro * ro * dims[i + 1] * C * 4 + ro * ro * dims[i + 1]
    total += dims[-1] * res0 * res0 // 2**cfg.num_stages
    total += dims[-1] * ncls
    return total


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("fvcore")
    old = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logger.setLevel(old)


def _fvcore(model: nn.Module, x: torch.Tensor, elementwise: bool):
    """fvcore's analysis of ``model(x)``, quiet, with focalexp's extra handles."""
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model, x)
    fca.set_op_handle("aten::scaled_dot_product_attention", _sdpa_handle, **(ELEMENTWISE_HANDLES if elementwise else {}))
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    fca.tracer_warnings("none")
    return fca


def count_paper_macs(model: nn.Module, inputs: tuple) -> tuple[int, dict[str, int]]:
    """fvcore's count of ``model(*inputs)`` in the papers' convention (integer MACs, :data:`PAPER_OPS`)
    and what no handle counted (op -> occurrences; element-wise and shape ops, which the convention
    leaves out by design, not listed). Any module, any inputs: the parts of a detector, a head on RoIs."""
    skip = _FREE_OPS | {k.split("::")[-1] for k in ELEMENTWISE_HANDLES}
    with _quiet(), torch.no_grad():
        fca = _fvcore(model.eval(), inputs, elementwise=False)
        ops = fca.by_operator()
        unsupported = {k: v for k, v in fca.unsupported_ops().items() if k.split("::")[-1] not in skip}
    return sum(v for k, v in ops.items() if k in PAPER_OPS), unsupported


def _stage_of(name: str) -> str | None:
    parts = name.split(".")
    if name in ("stem", "norm", "head") or (len(parts) == 2 and parts[0] == "stages"):
        return name
    return None


def measure_flops(
    model: nn.Module,
    img_size: int = 224,
    *,
    name: str = "",
    in_chans: int = 3,
    depth: int = 2,
    cross_check: bool = True,
    config: FocalNetConfig | None = None,
) -> FlopsReport:
    """Count the FLOPs of ``model`` for one ``in_chans x img_size x img_size`` image (batch 1).

    ``config`` (or ``model.config`` for a FocalNet) enables the official analytic count. ``depth``
    limits the per-module breakdown to module names with at most that many dots + 1 parts.
    """
    model = model.eval()
    x = torch.zeros(1, in_chans, img_size, img_size)
    with _quiet(), torch.no_grad():
        fca = _fvcore(model, x, elementwise=True)
        per_mod_op = fca.by_module_and_operator()
        unsupported = {k: v for k, v in fca.unsupported_ops().items() if k.split("::")[-1] not in _FREE_OPS}

    def paper(counter: Counter) -> int:
        return sum(v for k, v in counter.items() if k in PAPER_OPS)

    total_ops = per_mod_op.get("", Counter())
    gmacs = paper(total_ops) / 1e9
    gmacs_all = sum(total_ops.values()) / 1e9
    by_stage = {m: paper(c) / 1e9 for m, c in per_mod_op.items() if _stage_of(m)}
    by_module = {
        m: paper(c) / 1e9 for m, c in per_mod_op.items() if m and m.count(".") < max(depth, 1) and paper(c) > 0
    }
    by_operator = {k: v / 1e9 for k, v in sorted(total_ops.items(), key=lambda kv: -kv[1]) if v}
    not_counted = {k: v / 1e9 for k, v in sorted(total_ops.items(), key=lambda kv: -kv[1]) if k not in PAPER_OPS and v}

    fc_gmacs = _flop_counter_gmacs(model, x) if cross_check else None
    cfg = config if config is not None else getattr(model, "config", None)
    off = official_flops(cfg, img_size) if isinstance(cfg, FocalNetConfig) else None
    return FlopsReport(
        model=name or type(model).__name__,
        img_size=img_size,
        params=count_params(model),
        gmacs=gmacs,
        gmacs_elementwise=gmacs_all,
        flop_counter_gmacs=fc_gmacs,
        official_gflops=None if off is None else off / 1e9,
        by_stage=by_stage,
        by_operator=by_operator,
        by_module=by_module,
        not_counted=not_counted,
        unsupported=unsupported,
    )


def _flop_counter_gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """The cross-check: ``FlopCounterMode``'s count of one forward (2 FLOPs per MAC), halved, in G."""
    from torch.utils.flop_counter import FlopCounterMode

    with _quiet(), torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() / 2 / 1e9


# ---------------------------------------------------------------------------- counts of a config, cached
_REPORT_TYPES: dict[str, Any] = {
    "img_size": int, "params": int, "gmacs": float, "gmacs_elementwise": float, "flop_counter_gmacs": (float, None),
    "official_gflops": (float, None), "convention": str, "by_stage": float, "by_operator": float,
    "by_module": float, "not_counted": float, "unsupported": int,
}


def _is(v: Any, t: Any) -> bool:
    if isinstance(t, tuple):
        return any(_is(v, x) for x in t)
    if t is None:
        return v is None
    if t is float:  # JSON writes 4.0 as 4.0, but a count of 0 may come back as an int
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, t) and not isinstance(v, bool)


def _valid_report(d: Any) -> bool:
    """A cached report as :meth:`FlopsReport.to_dict` writes it, less ``model``: every field, of its type."""
    if not isinstance(d, dict) or set(d) != set(_REPORT_TYPES):
        return False
    for k, t in _REPORT_TYPES.items():
        v = d[k]
        if k.startswith("by_") or k in ("not_counted", "unsupported"):
            if not isinstance(v, dict) or not all(isinstance(n, str) and _is(x, t) for n, x in v.items()):
                return False
        elif not _is(v, t):
            return False
    return d["params"] >= 0 and d["img_size"] >= 1


def _report_from(d: dict[str, Any], name: str) -> FlopsReport:
    floats = ("gmacs", "gmacs_elementwise", "flop_counter_gmacs", "official_gflops")
    d = {k: (float(v) if k in floats and v is not None else v) for k, v in d.items()}
    for k in ("by_stage", "by_operator", "by_module", "not_counted"):
        d[k] = {n: float(x) for n, x in d[k].items()}
    return FlopsReport(model=name or "FocalNet", **d)


def config_flops(
    cfg: FocalNetConfig,
    img_size: int | None = None,
    *,
    name: str = "",
    depth: int = 2,
    cross_check: bool = True,
    cache: bool = True,
) -> FlopsReport:
    """:func:`measure_flops` of the FocalNet that ``cfg`` builds (batch 1, ``cfg.in_chans`` channels, at
    ``img_size`` or ``cfg.img_size``): the same report, from the on-disk count cache (:mod:`.countcache`)
    when this code counted this config before.

    On a miss the model is built without init (zero weights), counted by fvcore, and the cross-check runs
    on a twin on the meta device (``FlopCounterMode`` counts shapes, so the figure is the same without the
    arithmetic). ``cache=False`` neither reads nor writes the cache.
    """
    from . import countcache

    size = cfg.img_size if img_size is None else img_size
    key = {"config": cfg.to_dict(), "img_size": size, "depth": depth}
    hit = countcache.lookup("flops", key, _valid_report) if cache else None
    if hit is not None and (hit["flop_counter_gmacs"] is not None or not cross_check):
        rep = _report_from(hit, name)
        if not cross_check:
            rep.flop_counter_gmacs = None
        return rep
    rep = measure_flops(model_for_counting(cfg), size, name=name, in_chans=cfg.in_chans, depth=depth,
                        cross_check=False, config=cfg)
    if cross_check:
        from ..models.focalnet import skip_weight_init

        with torch.device("meta"), skip_weight_init():
            twin = FocalNet(cfg)
        rep.flop_counter_gmacs = _flop_counter_gmacs(twin.eval(), torch.zeros(1, cfg.in_chans, size, size, device="meta"))
    if cache:
        countcache.store("flops", key, {k: v for k, v in rep.to_dict().items() if k != "model"})
    return rep


def config_gmacs(cfg: FocalNetConfig, img_size: int | None = None, *, cache: bool = True) -> float:
    """GMACs per image (fvcore's count, the papers' convention) of the FocalNet ``cfg`` builds: analytic
    (:mod:`focalexp.models.macs`, equal to fvcore, microseconds) for the token mixers it models, else
    :func:`config_flops` (an fvcore trace, kept in the count cache). The one place that picks the counter."""
    from ..models import macs

    try:
        return macs.gmacs(cfg, img_size)
    except macs.NotAnalytic:
        return config_flops(cfg, img_size, cross_check=False, cache=cache).gmacs


def config_flops_table(cfg: FocalNetConfig, img_size: int | None = None, depth: int = 3, *, cache: bool = True) -> str:
    """:func:`flops_table` of the FocalNet that ``cfg`` builds, cached like :func:`config_flops`."""
    from . import countcache

    size = cfg.img_size if img_size is None else img_size
    key = {"config": cfg.to_dict(), "img_size": size, "depth": depth, "table": True}
    hit = countcache.lookup("flops_table", key, lambda v: isinstance(v, str)) if cache else None
    if hit is not None:
        return hit
    table = flops_table(model_for_counting(cfg), size, depth=depth, in_chans=cfg.in_chans)
    if cache:
        countcache.store("flops_table", key, table)
    return table


def flops_table(model: nn.Module, img_size: int = 224, depth: int = 3, in_chans: int = 3) -> str:
    """fvcore's per-module table (papers' convention) with parameter shapes, to ``depth`` levels."""
    from fvcore.nn import flop_count_table

    x = torch.zeros(1, in_chans, img_size, img_size)
    with _quiet(), torch.no_grad():
        return flop_count_table(_fvcore(model.eval(), x, elementwise=False), max_depth=depth)
