"""Results of a sweep as a DataFrame (one row per run); the report built from it is
:mod:`focalexp.sweep.reporting`."""

from __future__ import annotations

import json
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
