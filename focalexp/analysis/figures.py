"""Figures of maps, in the paper's layout: the input image, then the maps beside it (not overlaid).

Every map is upsampled bilinearly to the image size, so a feature cell covers exactly the pixels it
was computed from (stride x stride). Each panel has its own colour bar, or, with ``shared_scale``,
every map of a figure uses one range and one colour bar. The suffix of ``out`` picks PNG, PDF or SVG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

FIG_SUFFIXES = (".png", ".pdf", ".svg")


def check_figure_path(out: str | os.PathLike) -> Path:
    """The output path, refused unless its suffix is a figure format (checked before any work)."""
    p = Path(out)
    if p.suffix.lower() not in FIG_SUFFIXES:
        raise ConfigError(f"--out: '{p}' must end in {', '.join(FIG_SUFFIXES)}")
    return p


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, H, W)``, bilinear, half-pixel aligned (``align_corners=False``)."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def save(fig, out: str | os.PathLike, dpi: int = 150) -> Path:
    p = check_figure_path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, bbox_inches="tight")
    return p


def plot_map_panels(
    display: np.ndarray,
    columns: Mapping[str, torch.Tensor],
    *,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    shared_scale: bool = False,
    cmap: str = "viridis",
    markers: Mapping[str, tuple[float, float]] | None = None,
    out: str | os.PathLike | None = None,
):
    """One row per image: the image, then one panel per entry of ``columns`` (each ``(B, h, w)``).

    ``markers`` puts a cross on a column's panels at ``(y, x)`` given as fractions of the image (for
    example the query token of an attention map). Returns the matplotlib figure (also saved to ``out``).
    """
    import matplotlib.pyplot as plt
    B, H, W = display.shape[:3]
    ups = {k: upsample(v, (H, W)).numpy() for k, v in columns.items()}
    n = 1 + len(ups)
    fig, axes = plt.subplots(B, n, figsize=(2.6 * n + (0.6 if shared_scale else 0), 2.5 * B), squeeze=False,
                             layout="constrained")
    vmin = vmax = None
    if shared_scale and ups:
        vmin = min(float(v.min()) for v in ups.values())
        vmax = max(float(v.max()) for v in ups.values())
    im = None
    for b in range(B):
        axes[b, 0].imshow(display[b])
        if row_labels is not None:
            axes[b, 0].set_ylabel(row_labels[b])
        for j, (name, arr) in enumerate(ups.items(), start=1):
            ax = axes[b, j]
            im = ax.imshow(arr[b], cmap=cmap, vmin=vmin, vmax=vmax)
            if markers and name in markers:
                fy, fx = markers[name]
                ax.plot([fx * W - 0.5], [fy * H - 0.5], marker="+", color="red", markersize=12, mew=2)
            if not shared_scale:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        if b == 0:
            axes[0, 0].set_title("input")
            for j, name in enumerate(ups, start=1):
                axes[0, j].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if shared_scale and im is not None:
        fig.colorbar(im, ax=axes[:, 1:], fraction=0.03, pad=0.01, label="shared scale")
    if title:
        fig.suptitle(title, fontsize=10)
    if out is not None:
        save(fig, out)
    return fig


def plot_kernels(kernels: Mapping[str, Sequence[torch.Tensor]], *, title: str | None = None,
                 out: str | os.PathLike | None = None):
    """Depthwise kernels (mean over channels): one column per block (stage), one row per focal level.

    A diverging colour map centred on zero (kernel weights are signed), each panel with its colour bar.
    """
    import matplotlib.pyplot as plt
    names = list(kernels)
    levels = max((len(v) for v in kernels.values()), default=0)
    if not names or not levels:
        raise ConfigError("kernels: the model has no depthwise focal kernels to show")
    fig, axes = plt.subplots(levels, len(names), figsize=(2.6 * len(names), 2.4 * levels), squeeze=False,
                             layout="constrained")
    for j, name in enumerate(names):
        for lvl in range(levels):
            ax = axes[lvl, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if lvl >= len(kernels[name]):
                ax.axis("off")
                continue
            k = kernels[name][lvl].numpy()
            lim = float(np.abs(k).max()) or 1.0
            im = ax.imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            stage = name.split(".blocks.")[0].replace("stages.", "stage ").replace("layers.", "stage ")
            ax.set_title(f"{stage}, level {lvl + 1} ({k.shape[0]}x{k.shape[1]})", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    if out is not None:
        save(fig, out)
    return fig


def plot_erf(erfs: Mapping[str, torch.Tensor], *, title: str | None = None, floor: float = 1e-3,
             out: str | os.PathLike | None = None):
    """Effective receptive fields side by side, each normalised to its maximum, on a log colour scale
    (``log10`` of the relative contribution, clipped at ``floor``), with the share-of-area annotations
    of :func:`focalexp.analysis.maps.erf_area_ratio`."""
    from .maps import erf_area_ratio

    import matplotlib.pyplot as plt
    n = len(erfs)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n + 0.8, 3.2), squeeze=False, layout="constrained")
    im = None
    for ax, (name, e) in zip(axes[0], erfs.items()):
        rel = (e / e.max().clamp_min(1e-30)).clamp_min(floor).log10().numpy()
        im = ax.imshow(rel, cmap="magma", vmin=np.log10(floor), vmax=0.0)
        r = erf_area_ratio(e, (0.5, 0.99))
        ax.set_title(f"{name}\narea 50%: {100 * r[0.5]:.1f}%  99%: {100 * r[0.99]:.1f}%", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0, :], fraction=0.03, pad=0.01, label="log10 relative contribution")
    if title:
        fig.suptitle(title, fontsize=10)
    if out is not None:
        save(fig, out)
    return fig
