"""Results of a sweep as a DataFrame (one row per run), and a paper-style report from it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import FocalexpError
from .store import SweepDir

# result.json keys reported as metrics, in this order, with their table headers
METRICS = {
    "top1": "top-1 (%)", "top5": "top-5 (%)", "best_top1": "best top-1 (%)", "ema_top1": "EMA top-1 (%)",
    "params": "params (M)", "gmacs": "GMACs", "gmacs_elementwise": "GMACs (incl. elementwise)",
    "images_per_s": "images/s", "train_images_per_s": "train images/s", "step_ms": "step (ms)",
    "train_seconds": "train s", "epochs_done": "epochs", "peak_memory_mb": "peak memory (MB)",
}
_SCALE = {"params": 1e-6}


def axis_cell(v: Any) -> Any:
    """Axis values as table cells: lists and mappings become compact text (Parquet needs one type)."""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, separators=(",", ":"))
    return v


def collect(sweep_dir: str | Path, write: bool = True):
    """One row per run of the sweep: ``run_id``, the grid axes (dotted names), ``seed``, ``status``,
    ``reason``, then every scalar of the run's ``result.json``. Writes ``results.csv`` and
    ``results.parquet`` into the sweep dir (``write=False`` skips that) and returns the DataFrame."""
    import pandas as pd

    sweep = SweepDir(sweep_dir)
    manifest = sweep.manifest()
    rows = []
    for entry in manifest["runs"]:
        res = sweep.result(entry["run_id"]) or {}
        row: dict[str, Any] = {"run_id": entry["run_id"]}
        row.update({k: axis_cell(v) for k, v in entry["axes"].items()})
        row["seed"] = entry["seed"]
        row["status"] = res.get("status", "missing")
        row["reason"] = res.get("reason", "")
        for k, v in res.items():
            if k not in row and not isinstance(v, (dict, list)):
                row[k] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["axes"] = list(manifest["axes"])
    df.attrs["name"] = manifest["name"]
    df.attrs["task"] = manifest.get("task", "train")
    if write:
        df.to_csv(sweep.path / "results.csv", index=False)
        try:
            df.to_parquet(sweep.path / "results.parquet", index=False)
        except ImportError as e:  # pragma: no cover - pyarrow is a dependency
            raise FocalexpError(f"parquet output needs pyarrow: {e}") from None
    return df


def summarize(df):
    """Mean, std and count over seeds of every metric, per combination of the axes (done runs only)."""
    axes = [a for a in df.attrs.get("axes", []) if a in df.columns]
    done = df[df["status"] == "done"]
    metrics = [m for m in METRICS if m in done.columns and done[m].notna().any()]
    if done.empty or not metrics:
        return None, axes, metrics
    keys = axes or ["seed"]
    g = done.groupby(keys, sort=False, dropna=False)[metrics]
    summary = g.agg(["mean", "std", "count"])
    return summary, keys, metrics


def _fmt(mean: float, std: float, n: int, metric: str) -> str:
    scale = _SCALE.get(metric, 1.0)
    mean, std = mean * scale, std * scale
    digits = 4 if metric.startswith("gmacs") and abs(mean) < 1 else (2 if metric in ("params",) or abs(mean) < 100 else 1)
    if metric == "epochs_done":
        digits = 0
    text = f"{mean:.{digits}f}"
    if n > 1 and not math.isnan(std) and metric not in ("params", "gmacs", "gmacs_elementwise", "epochs_done"):
        text += f" ± {std:.{digits}f}"
    return text


def report(sweep_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> dict[str, Path]:
    """Write ``report.md``, ``report.tex`` and figures (metric against each axis; accuracy against
    GMACs) into ``SWEEP/report/``; returns the files written."""
    df = collect(sweep_dir)
    sweep = SweepDir(sweep_dir)
    out = sweep.path / "report"
    out.mkdir(exist_ok=True)
    summary, keys, metrics = summarize(df)
    files: dict[str, Path] = {}
    n_done = int((df["status"] == "done").sum())
    title = f"{df.attrs['name']}: {n_done} of {len(df)} runs done"
    if summary is None:
        (out / "report.md").write_text(f"# {title}\n\nNo finished runs yet.\n")
        return {"markdown": out / "report.md"}
    header = keys + [METRICS[m] for m in metrics] + ["seeds"]
    body = []
    for idx, row in summary.iterrows():
        idx = idx if isinstance(idx, tuple) else (idx,)
        cells = [str(v) for v in idx]
        for m in metrics:
            cells.append(_fmt(row[(m, "mean")], row[(m, "std")], int(row[(m, "count")]), m))
        cells.append(str(int(row[(metrics[0], "count")])))
        body.append(cells)
    md = [f"# {title}", "", "Mean ± std over seeds (std shown when there are several seeds).", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c) + " |" for c in body]
    (out / "report.md").write_text("\n".join(md) + "\n")
    files["markdown"] = out / "report.md"
    tex_esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
    tex = [r"\begin{tabular}{" + "l" * len(keys) + "r" * (len(header) - len(keys)) + "}", r"\toprule",
           " & ".join(tex_esc(h) for h in header) + r" \\", r"\midrule"]
    tex += [" & ".join(tex_esc(c) for c in cells) + r" \\" for cells in body]
    tex += [r"\bottomrule", r"\end{tabular}"]
    (out / "report.tex").write_text("\n".join(tex) + "\n")
    files["latex"] = out / "report.tex"
    files.update(_figures(df, keys, metrics, out, formats))
    return files


def _figures(df, keys: list[str], metrics: list[str], out: Path, formats: tuple[str, ...]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = df[df["status"] == "done"].copy()
    primary = next((m for m in ("top1", "images_per_s", "train_images_per_s", "gmacs") if m in metrics), metrics[0])
    files: dict[str, Path] = {}
    sns.set_theme(style="whitegrid", context="paper")
    for axis in [k for k in keys if k != "seed"]:
        others = [k for k in keys if k not in (axis, "seed") and 2 <= done[k].nunique() <= 8]
        hue = others[0] if others else None
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        data = done.assign(**{axis: done[axis].astype(str)})
        if hue:
            data[hue] = data[hue].astype(str)
        sns.pointplot(data=data, x=axis, y=primary, hue=hue, errorbar="sd", capsize=0.15, ax=ax,
                      dodge=0.3 if hue else False)
        ax.set_xlabel(axis)
        ax.set_ylabel(METRICS[primary])
        ax.set_title(f"{df.attrs['name']}: {METRICS[primary]} vs {axis}" + (" (mean ± sd over seeds)"
                                                                           if done["seed"].nunique() > 1 else ""))
        files.update(_save(fig, out / f"{primary}_vs_{axis.replace('.', '_')}", formats))
    if "top1" in metrics and "gmacs" in metrics:
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        label_keys = [k for k in keys if k != "seed"]
        mean = done.groupby(label_keys or ["seed"], sort=False, dropna=False)[["top1", "gmacs"]].mean()
        several = done["seed"].nunique() > 1
        if several:
            sns.scatterplot(data=done, x="gmacs", y="top1", ax=ax, alpha=0.35, color="C0", label="one seed")
        ax.plot(mean["gmacs"], mean["top1"], "o", color="C3", label="mean over seeds" if several else "one run")
        for idx, r in mean.iterrows():
            idx = idx if isinstance(idx, tuple) else (idx,)
            ax.annotate(", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(label_keys, idx)), (r["gmacs"], r["top1"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.margins(x=0.2, y=0.1)
        ax.set_xlabel("GMACs per image (fvcore)")
        ax.set_ylabel(METRICS["top1"])
        ax.set_title(f"{df.attrs['name']}: accuracy vs compute")
        ax.legend(fontsize=7)
        files.update(_save(fig, out / "top1_vs_gmacs", formats))
    return files


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
