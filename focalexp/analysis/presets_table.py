"""Every preset counted by the library beside its published numbers: what ``focalexp models`` lists.

:func:`compare_presets` gives one record per preset (its first published row beside it);
:func:`preset_counts` is the counting it does for one config (params, GMACs, official ``flops()``), which
``analysis/paper_table.py`` and ``tests/test_presets.py`` use for every published row (:func:`row_config`
gives a row's config). GMACs are fvcore's count, computed analytically where :mod:`focalexp.models.macs`
models the mixer (every built-in one), else traced by fvcore through the on-disk count cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..models.config import FocalNetConfig
from ..models.presets import PaperRow, Preset, list_presets

# progress(i, n, name): called before preset i (1-based) of n is counted
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Counts:
    params: int  # trainable parameters
    gmacs: float | None  # fvcore, the papers' convention; None when not counted (fast)
    official_gflops: float | None  # the official analytic flops() in G; None for mixers it does not cover


def row_config(preset: Preset, row: PaperRow | None) -> FocalNetConfig:
    """The preset's config at a published row's resolution and classifier head."""
    cfg = preset.config
    if row is not None and row.num_classes is not None and row.num_classes != cfg.num_classes:
        cfg = cfg.replace(num_classes=row.num_classes)
    if row is not None and row.img_size != cfg.img_size:
        cfg = cfg.replace(img_size=row.img_size)
    return cfg


def preset_counts(cfg: FocalNetConfig, *, fast: bool = False, cache: bool = True) -> Counts:
    """Params, GMACs (skipped when ``fast``) and the official flops() of the FocalNet ``cfg`` builds.

    GMACs are fvcore's count in the papers' convention. For the token mixers :mod:`focalexp.models.macs`
    models, it is computed analytically, which gives fvcore's number exactly (``tests/test_macs.py``,
    ``tests/test_presets.py``) in microseconds instead of a trace; any other mixer is traced by fvcore
    through the count cache (:func:`~.flops.config_gmacs` picks).
    """
    import torch

    from ..models.focalnet import FocalNet, skip_weight_init
    from .flops import config_gmacs, count_params, official_flops

    off = official_flops(cfg)
    official = None if off is None else off / 1e9
    gmacs = None if fast else config_gmacs(cfg, cache=cache)
    with torch.device("meta"), skip_weight_init():
        params = count_params(FocalNet(cfg))
    return Counts(params=params, gmacs=gmacs, official_gflops=official)


def compare_presets(kind: str | None = None, fast: bool = False, progress: Progress | None = None,
                    *, cache: bool = True) -> list[dict[str, Any]]:
    """One record per preset of ``kind`` (released, paper, toolkit; None: all): its name, kind, aliases,
    resolution, head, counted params / GMACs / official flops() (GMACs None when ``fast``), the first
    published row (``paper``), timm's weights tag and the description."""
    presets = list_presets(kind)
    records = []
    for i, p in enumerate(presets, 1):
        if progress is not None:
            progress(i, len(presets), p.name)
        cfg = p.config
        n = preset_counts(cfg, fast=fast, cache=cache)
        row = p.rows[0] if p.rows else None
        records.append(
            {
                "name": p.name,
                "kind": p.kind,
                "aliases": list(p.aliases),
                "img_size": cfg.img_size,
                "num_classes": cfg.num_classes,
                "params": n.params,
                "gmacs": n.gmacs,
                "official_gflops": n.official_gflops,
                "paper": None if row is None else {
                    "source": row.source,
                    "params": row.params,
                    "params_m": row.paper_params_m if row.paper_params_m is not None else row.params_m,
                    "gflops": row.paper_gflops,
                    "gmacs": row.gmacs,
                },
                "timm_weights": f"{p.timm_name}.{p.timm_tag}" if p.timm_name else None,
                "description": p.doc,
            }
        )
    return records
