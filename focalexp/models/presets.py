"""Named configs: the 15 released FocalNets and the paper-only variants, with the numbers they reproduce.

Every preset carries the published numbers of its architecture (:class:`PaperRow`): the exact parameter
count, the official repository's analytic ``flops()`` and the fvcore-convention GMACs, each at the
resolution and with the classifier head that the row states. ``tests/test_presets.py`` checks every
row; ``focalexp models`` prints them beside what focalexp measures.

Sources: the official README and configs, the paper (arXiv v3), timm's results CSVs; numbers marked
"computed" in ``shared/reference/focalnet.md`` §7 were derived from the official constructor and its
``flops()`` formula, and agree with the published ones wherever both exist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError, UnknownNameError, closest
from .config import FocalNetConfig


@dataclass(frozen=True)
class PaperRow:
    """Published numbers of one architecture at one resolution / head."""

    source: str
    img_size: int = 224
    num_classes: int | None = None  # head of this row when it differs from the preset's
    params: int | None = None  # exact trainable parameters
    params_m: float | None = None  # a published count in millions, to ``params_m_digits`` decimals
    params_m_digits: int = 2
    official_flops_g: float | None = None  # official analytic flops() in G (computed in the reference)
    gmacs: float | None = None  # fvcore-convention GMACs (conv/linear MACs + 5/elem LayerNorm), matched
    # at the precision it is printed with (tests round the measurement to as many decimals)
    paper_params_m: float | None = None  # as printed in the paper/README (for display)
    paper_gflops: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    config: FocalNetConfig
    kind: str  # "released" (official weights exist), "paper" (paper-only variant) or "toolkit"
    doc: str
    aliases: tuple[str, ...] = ()
    timm_name: str | None = None  # timm model whose published weights fit this preset
    timm_tag: str | None = None
    rows: tuple[PaperRow, ...] = field(default_factory=tuple)


_PRESETS: dict[str, Preset] = {}
_ALIASES: dict[str, str] = {}


def _add(p: Preset) -> None:
    _PRESETS[p.name] = p
    for a in p.aliases:
        _ALIASES[a] = p.name


T = dict(depths=(2, 2, 6, 2), embed_dim=96)
S = dict(depths=(2, 2, 18, 2), embed_dim=96)
B = dict(depths=(2, 2, 18, 2), embed_dim=128)
SRF = dict(focal_levels=2, focal_windows=3)
LRF = dict(focal_levels=3, focal_windows=3)
BIG = dict(use_conv_embed=True, use_layerscale=True, use_postln=True, drop_path_rate=0.5)
ISO = dict(isotropic=True, patch_size=16, focal_levels=3, focal_windows=3, drop_path_rate=0.2)

# ---------------------------------------------------------------------------- released (15)
for size, arch, dp, longname in (("t", T, 0.2, "tiny"), ("s", S, 0.3, "small"), ("b", B, 0.5, "base")):
    for rf, knobs in (("srf", SRF), ("lrf", LRF)):
        _add(
            Preset(
                name=f"focalnet_{size}_{rf}",
                config=FocalNetConfig(**arch, **knobs, drop_path_rate=dp),
                kind="released",
                doc=f"FocalNet-{size.upper()} ({rf.upper()}): depths {list(arch['depths'])}, dim {arch['embed_dim']}, "
                f"kernels {'[3,5]' if rf == 'srf' else '[3,5,7]'}; ImageNet-1K, 224.",
                aliases=(f"focalnet_{longname}_{rf}",),
                timm_name=f"focalnet_{longname}_{rf}",
                timm_tag="ms_in1k",
            )
        )

_ROWS: dict[str, tuple[PaperRow, ...]] = {
    "focalnet_t_srf": (
        PaperRow("README, Table 1, §7", params=28_427_116, official_flops_g=4.413, gmacs=4.421,
                 paper_params_m=28.4, paper_gflops=4.4),
    ),
    "focalnet_t_lrf": (
        PaperRow("README, Table 1, §7", params=28_647_928, official_flops_g=4.486, gmacs=4.492,
                 paper_params_m=28.6, paper_gflops=4.5),
    ),
    "focalnet_s_srf": (
        PaperRow("README, Table 1, §7", params=49_891_216, official_flops_g=8.613, gmacs=8.625,
                 paper_params_m=49.9, paper_gflops=8.6),
    ),
    "focalnet_s_lrf": (
        PaperRow("README, Table 1, §7", params=50_342_440, official_flops_g=8.732, gmacs=8.742,
                 paper_params_m=50.3, paper_gflops=8.7),
    ),
    "focalnet_b_srf": (
        PaperRow("README, Table 1, §7", params=88_148_144, official_flops_g=15.261, gmacs=15.276,
                 paper_params_m=88.1, paper_gflops=15.3),
        PaperRow("Table 4 (FocalNet-B at 384)", img_size=384, official_flops_g=44.85, paper_gflops=44.8),
    ),
    "focalnet_b_lrf": (
        PaperRow("README, Table 1, §7", params=88_749_768, official_flops_g=15.419, gmacs=15.432,
                 paper_params_m=88.7, paper_gflops=15.4),
    ),
}
for _name, _rows in _ROWS.items():
    _PRESETS[_name] = dataclasses.replace(_PRESETS[_name], rows=_rows)

for size, dim, params, off, gm, pp, pf in (
    ("t", 192, 5_880_280, 1.112, 1.114, 5.9, 1.1),
    ("s", 384, 22_376_344, 4.305, 4.308, 22.4, 4.3),
):
    longname = {"t": "tiny", "s": "small"}[size]
    _add(
        Preset(
            name=f"focalnet_{size}_iso",
            config=FocalNetConfig(depths=(12,), embed_dim=dim, **ISO),
            kind="released",
            doc=f"FocalNet-{size.upper()}/16 (isotropic): 12 blocks, dim {dim}, patch 16, kernels [3,5,7]; "
            "ImageNet-1K, 224 (official weights; timm has none).",
            aliases=(f"focalnet_{longname}_iso", f"focalnet_{longname}_iso_16"),
            rows=(PaperRow("README iso table, Table 16, §7", params=params, official_flops_g=off, gmacs=gm,
                           paper_params_m=pp, paper_gflops=pf),),
        )
    )

_add(
    Preset(
        name="focalnet_b_iso",
        config=FocalNetConfig(depths=(12,), embed_dim=768, use_layerscale=True, use_postln_in_modulation=True, **ISO),
        kind="released",
        doc="FocalNet-B/16 (isotropic) in the layout of the released checkpoint focalnet_base_iso_16.pth: "
        "LayerScale and a LayerNorm inside the modulation, pre-norm blocks. The official HEAD code builds "
        "use_postln=True instead, which cannot load that checkpoint (official issue #23); that architecture "
        "is focalnet_b_iso_postln. The README's 87.2 M is the count without the in-modulation LayerNorm.",
        aliases=("focalnet_base_iso", "focalnet_base_iso_16"),
        rows=(
            PaperRow("§7 (checkpoint layout, + LN in modulation)", params=87_255_832, official_flops_g=16.934,
                     gmacs=16.949, paper_params_m=87.2, paper_gflops=16.9),
        ),
    )
)
_add(
    Preset(
        name="focalnet_b_iso_postln",
        config=FocalNetConfig(depths=(12,), embed_dim=768, use_layerscale=True, use_postln=True, **ISO),
        kind="paper",
        doc="FocalNet-B/16 as the official HEAD code builds it (LayerScale + res-post-norm blocks). "
        "No checkpoint has this layout; see focalnet_b_iso.",
        rows=(PaperRow("README iso table, Table 16, §7", params=87_237_400, official_flops_g=16.934,
                       paper_params_m=87.2, paper_gflops=16.9,
                       note="§7's 16.949 GMACs is the checkpoint layout (focalnet_b_iso); this one has 12 fewer "
                       "LayerNorms (fvcore: 16.940)"),),
    )
)

# 22K-pretrained large models: 21842-class heads; the README's counts are with a 1000-class head
for size, dim, lv, win, pim, params, off, gm, p1k, res, extra in (
    ("l", 192, 3, 5, False, 239_134_898, 102.282, 105.06, 207.10, 384, {}),
    ("l", 192, 4, 3, False, 239_315_402, 102.433, 105.2, 207.28, 384, {"normalize_modulator": True}),
    ("xl", 256, 3, 5, False, 408_787_378, 180.769, 185.61, 366.08, 384, {}),
    ("xl", 256, 4, 3, False, 409_028_042, 180.970, 185.79, 366.32, 384, {}),
    ("h", 352, 3, 3, True, 745_276_338, 115.159, 118.26, 686.56, 224, {}),
):
    longname = {"l": "large", "xl": "xlarge", "h": "huge"}[size]
    kernels = [win + 2 * k for k in range(lv)]
    note = ""
    if extra.get("normalize_modulator"):
        note = ("normalize_modulator=True as in the official yaml (timm leaves it off; it changes no count). "
                "timm prints its GMACs to one decimal.")
    _add(
        Preset(
            name=f"focalnet_{size}_fl{lv}",
            config=FocalNetConfig(depths=(2, 2, 18, 2), embed_dim=dim, focal_levels=lv, focal_windows=win,
                                  use_postln_in_modulation=pim, num_classes=21842, img_size=res, **BIG, **extra),
            kind="released",
            doc=f"FocalNet-{size.upper()} (fl{lv}): depths [2,2,18,2], dim {dim}, kernels {kernels}, overlapped "
            f"embedding, LayerScale 1e-4, res-post-norm{', LN in modulation' if pim else ''}; ImageNet-22K "
            f"(21842 classes, IN-1k first), {res}."
            + (" normalize_modulator as in the official yaml (timm leaves it off)." if extra else ""),
            aliases=(f"focalnet_{longname}_fl{lv}",),
            timm_name=f"focalnet_{longname}_fl{lv}",
            timm_tag="ms_in22k",
            rows=(
                PaperRow("§7 (timm param_count, infer_gmacs)", img_size=res, params=params, official_flops_g=off,
                         gmacs=gm, note=note),
                PaperRow("README (1000-class head)", img_size=res, num_classes=1000, params_m=p1k,
                         paper_params_m=round(p1k)),
            ),
        )
    )

_add(
    Preset(
        name="focalnet_h_fl4",
        config=FocalNetConfig(depths=(2, 2, 18, 2), embed_dim=352, focal_levels=4, focal_windows=3,
                              use_postln_in_modulation=True, num_classes=0, img_size=224, **BIG),
        kind="released",
        doc="FocalNet-H (fl4): depths [2,2,18,2], dim 352, kernels [3,5,7,9], overlapped embedding, LayerScale, "
        "res-post-norm, LN in modulation; ImageNet-22K, 224. Built without a head, like timm's published "
        "weights (num_classes=0); the official checkpoint has a 21842-class head (set num_classes=21842).",
        aliases=("focalnet_huge_fl4",),
        timm_name="focalnet_huge_fl4",
        timm_tag="ms_in22k",
        rows=(
            PaperRow("§7 (timm param_count, num_classes=0)", params=686_460_664, gmacs=118.9,
                     note="timm's GMACs is printed to one decimal"),
            PaperRow("§7 (official, 21842-class head)", num_classes=21842, params=747_989_578,
                     official_flops_g=115.869),
            PaperRow("README (1000-class head)", num_classes=1000, params_m=689.28, paper_params_m=689),
        ),
    )
)

# ---------------------------------------------------------------------------- paper-only variants
for size, arch, dp, p, off, pp in (
    ("t", T, 0.2, 30.37, 4.413, 30.4),
    ("s", S, 0.3, 51.84, 8.613, 51.8),
    ("b", B, 0.5, 91.60, 15.261, 91.6),
):
    _add(
        Preset(
            name=f"focalnet_{size}_srf_overlap",
            config=FocalNetConfig(**arch, **SRF, use_conv_embed=True, drop_path_rate=dp),
            kind="paper",
            doc=f"Table 2: FocalNet-{size.upper()} (SRF) with overlapped patch embedding (stem k7 s4, "
            "downsamples k3 s2). The official flops() counts every embedding as k=patch, so the paper's FLOPs "
            "do not change; fvcore counts the larger kernels.",
            rows=(PaperRow("Table 2, §7", params_m=p, official_flops_g=off, paper_params_m=pp,
                           paper_gflops=round(off, 1)),),
        )
    )

for size, depths, dim, dp, p, off, pp, pf in (
    ("t", (3, 3, 16, 3), 64, 0.2, 25.14, 4.018, 25.1, 4.0),
    ("s", (4, 4, 28, 4), 64, 0.3, 38.16, 6.370, 38.2, 6.4),
    ("b", (4, 4, 28, 4), 96, 0.5, 85.09, 14.237, 85.1, 14.3),
):
    _add(
        Preset(
            name=f"focalnet_{size}_srf_deep",
            config=FocalNetConfig(depths=depths, embed_dim=dim, **SRF, use_conv_embed=True, drop_path_rate=dp),
            kind="paper",
            doc=f"Table 3 (deeper and thinner): depths {list(depths)}, dim {dim}, SRF. The table's counts "
            "match only with overlapped patch embedding, so it is on (inferred; the paper does not say).",
            rows=(PaperRow("Table 3, §7", params_m=p, official_flops_g=off, paper_params_m=pp, paper_gflops=pf),),
        )
    )

_add(
    Preset(
        name="focalnet_l_srf",
        config=FocalNetConfig(depths=(2, 2, 18, 2), embed_dim=192, **SRF, use_layerscale=True, drop_path_rate=0.2),
        kind="paper",
        doc="Table 4's FocalNet-L (197.1 M): depths [2,2,18,2], dim 192, SRF, non-overlapped embedding, "
        "LayerScale 1e-4 (the 22K recipe of Table 19; without it the count is 197.10 M, with it 197.14 M as "
        "in the reference); drop path 0.2. Not the released large_fl3/fl4 (207 M, overlapped embedding).",
        rows=(
            PaperRow("Table 4, §7 (224)", params_m=197.14, official_flops_g=34.22, paper_params_m=197.1,
                     paper_gflops=34.2),
            PaperRow("Table 4, §7 (384)", img_size=384, official_flops_g=100.56, paper_gflops=100.6),
        ),
    )
)

for name, knobs, p, off, pp, pf, doc in (
    ("focalnet_t_fl0", dict(focal_levels=0), 28.27, 4.358, 28.3, 4.35,
     "Table 14, L=0: no focal level, only the global context (the SE-like global pooling aggregator of Table 12)."),
    ("focalnet_t_fl1", dict(focal_levels=1), 28.31, 4.374, 28.3, 4.37, "Table 14, L=1 (kernel 3)."),
    ("focalnet_t_fl4", dict(focal_levels=4), 29.01, 4.604, 29.0, 4.59,
     "Table 14, L=4 (kernels 3-5-7-9, receptive field 21). The paper prints 4.59 G; the official formula gives 4.604."),
    ("focalnet_t_fl1_k13", dict(focal_levels=1, kernel_sizes=(13,)), 29.02, 4.603, 28.8, 4.59,
     "Table 14, one level with kernel 13 (receptive field 13, like LRF). The paper prints 28.8 M / 4.59 G, "
     "which the official code does not give: this preset matches the official code (29.02 M, 4.603 G); "
     "the reason for the paper's numbers is unknown."),
):
    _add(
        Preset(
            name=name,
            config=FocalNetConfig(**T, focal_windows=3, drop_path_rate=0.2, **knobs),
            kind="paper",
            doc=doc,
            rows=(PaperRow("Table 14, §7", params_m=p, official_flops_g=off, paper_params_m=pp, paper_gflops=pf),),
        )
    )

# Tables 12 and 13: token mixers and components, on FocalNet-T (LRF). The paper gives params to 0.1 M.
for suffix, knobs, pp, pf, doc in (
    ("dwconv", dict(token_mixer="dwconv"), 28.6, 4.47,
     "Table 12, depth-wise ConvNet: y = q(GELU(h(z^L))): the same depthwise stack, no gating/modulation."),
    ("pooling", dict(token_mixer="pooling"), 28.3, 4.37,
     "Table 12, pooling aggregator: each level's depthwise conv replaced by average pooling."),
    ("window_attention", dict(token_mixer="window_attention"), None, None,
     "FocalNet-T macro-architecture with Swin's shifted-window attention (window 7, 32 channels/head) as "
     "the token mixer, so a comparison isolates the mixer (Swin-T itself: 28.3 M, 4.5 G)."),
    ("additive", dict(modulation="add"), 28.6, 4.49, "Table 13, additive: the modulator is added to q, not multiplied."),
    ("no_global", dict(global_context=False), 28.6, 4.48, "Table 13, no global pooling context."),
    ("top_only", dict(aggregation="top_only"), 28.6, 4.49, "Table 13, top-only: only Z^L (and the global context) aggregated."),
    ("no_gating", dict(gating="none"), 28.6, 4.48, "Table 13, no gating: levels summed with equal weight."),
):
    rows = ()
    if pp is not None:
        rows = (PaperRow(f"Table {12 if suffix in ('dwconv', 'pooling') else 13} (0.1 M precision)",
                         params_m=pp, params_m_digits=1, paper_params_m=pp, paper_gflops=pf),)
    _add(
        Preset(
            name=f"focalnet_t_lrf_{suffix}",
            config=FocalNetConfig(**T, **LRF, drop_path_rate=0.2, **knobs),
            kind="paper",
            doc=doc,
            rows=rows,
        )
    )


# ---------------------------------------------------------------------------- toolkit
_add(
    Preset(
        name="focalnet_micro",
        config=FocalNetConfig(depths=(1, 1, 2), embed_dim=32, patch_size=2, focal_levels=2, focal_windows=3,
                              img_size=32, num_classes=2, drop_path_rate=0.0),
        kind="toolkit",
        doc="A CPU-sized FocalNet for 32 px inputs (the built-in Pathfinder task, CIFAR): 3 stages of 1-1-2 "
        "blocks, dim 32, patch 2 (maps 16/8/4), SRF kernels [3,5]. Not from the paper: the default model of "
        "the cpu_small recipe and the demo sweeps.",
    )
)


# ---------------------------------------------------------------------------- lookup
def canonical_name(name: str) -> str:
    """The preset name for ``name`` or one of its aliases; unknown names raise with the closest names."""
    if name in _PRESETS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    hits = closest(name, list(_PRESETS) + list(_ALIASES), n=3)
    hint = f"; closest: {', '.join(hits)}" if hits else ""
    raise UnknownNameError(f"unknown model '{name}'{hint} (see `focalexp models`)")


def resolve_config(name_or_config: Any = None, **overrides: Any) -> FocalNetConfig:
    """The config for a preset name/alias, a :class:`FocalNetConfig`, or a mapping, with ``overrides``.

    A mapping may name a base preset under ``preset`` and give overrides beside it
    (``{"preset": "focalnet_t_srf", "focal_levels": 3}``); without ``preset`` it is a full config.
    """
    if name_or_config is None:
        base = FocalNetConfig()
    elif isinstance(name_or_config, FocalNetConfig):
        base = name_or_config
    elif isinstance(name_or_config, str):
        base = get_preset(name_or_config).config
    elif isinstance(name_or_config, Mapping):
        d = dict(name_or_config)
        preset = d.pop("preset", None)
        if preset is not None:
            if not isinstance(preset, str):
                raise ConfigError(f"expected a model name, got {preset!r}", key="preset")
            base = get_preset(preset).config.replace(**d) if d else get_preset(preset).config
        else:
            base = FocalNetConfig.from_dict(d)
    else:
        raise ConfigError(f"expected a preset name, a FocalNetConfig or a dict, got {type(name_or_config).__name__}", key="model")
    return base.replace(**overrides) if overrides else base


def get_preset(name: str) -> Preset:
    return _PRESETS[canonical_name(name)]


def list_presets(kind: str | None = None) -> list[Preset]:
    return [p for p in _PRESETS.values() if kind is None or p.kind == kind]


def list_models(kind: str | None = None) -> list[str]:
    """Preset names (``kind``: ``released``, ``paper``, ``toolkit`` or None for all)."""
    return [p.name for p in list_presets(kind)]


def aliases() -> dict[str, str]:
    return dict(_ALIASES)
