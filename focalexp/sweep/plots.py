"""The report's seaborn figures: the main metric against each axis and against GMACs, and the paired
differences against the baseline beside the paper's, every one with its 95% interval over seeds (the
method the tables use)."""

from __future__ import annotations

import math
from pathlib import Path

from . import stats
from .collect import METRICS
from .reporting import ACCURACY_METRICS


def sweep_figures(df, tables, out: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """Figures of the report ``tables`` (:class:`focalexp.sweep.reporting.ReportTables`) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = df[df["status"] == "done"].copy()
    primary, method = tables.metric, tables.method
    keys = [a for a in df.attrs.get("axes", []) if a in df.columns]
    several = bool((tables.arm_numbers["n"] > 1).any())
    what = f"mean, 95% CI over seeds ({'t' if method == 't' else 'bootstrap'})" if several else "one seed"
    files: dict[str, Path] = {}
    sns.set_theme(style="whitegrid", context="paper")

    def band(v):
        lo, hi = stats.interval(v, method)
        m = float(v.mean())
        return (m, m) if math.isnan(lo) else (lo, hi)

    for axis in keys:
        others = [k for k in keys if k != axis and 2 <= done[k].nunique() <= 8]
        hue = others[0] if others else None
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        data = done.assign(**{axis: done[axis].astype(str)})
        if hue:
            data[hue] = data[hue].astype(str)
        sns.pointplot(data=data, x=axis, y=primary, hue=hue, errorbar=band, capsize=0.15, ax=ax,
                      dodge=0.3 if hue else False)
        ax.set_xlabel(axis)
        ax.set_ylabel(METRICS[primary])
        ax.set_title(f"{df.attrs['name']}: {METRICS[primary]} vs {axis}\n({what})", fontsize=9)
        files.update(_save(fig, out / f"{primary}_vs_{axis.replace('.', '_')}", formats))
    # the score against compute, and a detector's box AP against its backbone's classification top-1
    # (the paper's two tables side by side) when the backbones differ in it
    xs = {"gmacs": ("GMACs per image (fvcore)", "vs compute", 1)}
    if primary != "top1":
        xs["backbone_top1"] = (METRICS["backbone_top1"], "vs the backbone's classification top-1", 2)
    for x, (xlabel, title, at_least) in xs.items():
        if primary in ACCURACY_METRICS and x in done.columns and done[x].notna().any() \
                and done[x].nunique() >= at_least:
            fig = _against(done, df, tables, keys, primary, x, several, xlabel, title)
            files.update(_save(fig, out / f"{primary}_vs_{x}", formats))
    paired = tables.paired
    if paired is not None and (~paired["is_baseline"] & paired["delta"].notna()).any():
        rows = paired[~paired["is_baseline"] & paired["delta"].notna()]
        labels = [", ".join(f"{k.split('.')[-1]}={_short(rows.at[i, k])}" for k in keys) for i in rows.index]
        fig, ax = plt.subplots(figsize=(5.2, 0.45 * len(rows) + 1.4))
        y = list(range(len(rows)))[::-1]
        lo = (rows["delta"] - rows["lo"]).fillna(0).clip(lower=0)
        hi = (rows["hi"] - rows["delta"]).fillna(0).clip(lower=0)
        ax.errorbar(rows["delta"], y, xerr=[lo, hi], fmt="o", color="C0", capsize=3,
                    label="ours, 95% CI" if several else "ours (one seed)")
        px = [tables.paper_deltas.get(i) for i in rows.index]
        if any(v is not None for v in px):
            ax.plot([v if v is not None else math.nan for v in px], y, "x", color="C3", markersize=8, label="paper")
        ax.axvline(0, color="0.4", lw=0.8)
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlabel(f"Δ {METRICS[primary]} vs baseline (paired by seed)")
        ax.set_title(f"{df.attrs['name']}: differences from the baseline", fontsize=9)
        ax.legend(fontsize=7)
        files.update(_save(fig, out / f"{primary}_delta_vs_baseline", formats))
    return files


def _against(done, df, tables, keys, primary: str, x: str, several: bool, xlabel: str, title: str):
    """The arms' ``primary`` (mean, 95% CI; each seed as a dot) against their mean ``x``."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    arms = tables.arm_numbers
    g = stats.arm_stats(df, x, keys, "t")
    if several:
        sns.scatterplot(data=done, x=x, y=primary, ax=ax, alpha=0.35, color="C0", label="one seed")
    lo = (arms["mean"] - arms["lo"]).fillna(0).clip(lower=0)
    hi = (arms["hi"] - arms["mean"]).fillna(0).clip(lower=0)
    ax.errorbar(g["mean"], arms["mean"], yerr=[lo, hi], fmt="o", color="C3", capsize=3,
                label="mean, 95% CI" if several else "one run")
    for i, xv, y in zip(arms.index, g["mean"], arms["mean"]):
        ax.annotate(", ".join(f"{k.split('.')[-1]}={_short(arms.at[i, k])}" for k in keys), (xv, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(METRICS[primary])
    ax.set_title(f"{df.attrs['name']}: {'accuracy' if primary == 'top1' else METRICS[primary]} {title}",
                 **({"fontsize": 9} if x != "gmacs" else {}))
    ax.legend(fontsize=7)
    return fig


def _short(value, width: int = 24) -> str:
    """An axis value as a point label: a path by its last part, anything longer than ``width`` cut."""
    text = str(value)
    if "/" in text and not text.startswith(("[", "{")):
        text = text.rstrip("/").rsplit("/", 1)[-1] or text
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _save(fig, stem: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    """Save ``fig`` as ``stem.<fmt>`` for every format, close it; file name -> path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    files = {}
    for fmt in formats:
        p = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(p, dpi=150)
        files[p.name] = p
    plt.close(fig)
    return files
