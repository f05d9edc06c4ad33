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
    # detection (COCOeval, percent): box and mask AP, the context class of Shapes-det, the best epoch's
    "box_ap": "box AP", "box_ap50": "box AP50", "box_ap75": "box AP75", "box_ap_s": "box AP small",
    "box_ap_m": "box AP medium", "box_ap_l": "box AP large", "mask_ap": "mask AP", "mask_ap50": "mask AP50",
    "mask_ap75": "mask AP75", "box_ap_context": "box AP context class", "best_box_ap": "best box AP",
    "ema_box_ap": "EMA box AP", "ema_mask_ap": "EMA mask AP",
    "backbone_top1": "backbone top-1 (%)", "backbone_gmacs": "backbone GMACs",
    "params": "params (M)", "gmacs": "GMACs", "gmacs_elementwise": "GMACs (incl. elementwise)",
    "images_per_s": "images/s", "train_images_per_s": "train images/s", "step_ms": "step (ms)",
    "train_seconds": "train s", "epochs_done": "epochs", "peak_memory_mb": "peak memory (MB)",
}


def axis_cell(v: Any) -> Any:
    """Axis values as table cells: lists and mappings become compact text (Parquet needs one type)."""
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, separators=(",", ":"))
    return v


def code_columns(code: dict[str, Any]) -> dict[str, Any]:
    """A run's code (:func:`focalexp.provenance.run_code` of its run dir) as columns: ``code_commit``,
    ``code_dirty``, ``code_diff`` (SHA-256 of ``git diff HEAD``), ``code_snapshot``; None where unknown."""
    return {"code_commit": code["commit"], "code_dirty": code["dirty"], "code_diff": code["diff_sha256"],
            "code_snapshot": code["snapshot"]}


def mixed_code(sweep_dir: str | Path) -> str | None:
    """One line (a warning) when the runs of the sweep ran from different code (the commit or diff hash of
    any attempt, from the runs' ``provenance.json``); None when they agree or say nothing."""
    from .. import provenance

    sweep = SweepDir(sweep_dir)
    return provenance.mixed_code({e["run_id"]: provenance.run_code(sweep.run_dir(e["run_id"]))["versions"]
                                  for e in sweep.manifest()["runs"]})


def collect(sweep_dir: str | Path, write: bool = True):
    """One row per run of the sweep: ``run_id``, the grid axes (dotted names), ``seed``, ``status``,
    ``reason``, the code it ran (:func:`code_columns`), then every scalar of the run's ``result.json``.
    Writes ``results.csv`` and ``results.parquet`` into the sweep dir (``write=False`` skips that) and
    returns the DataFrame; ``df.attrs["mixed_code"]`` is :func:`mixed_code`'s line (or None)."""
    import pandas as pd

    from .. import provenance

    sweep = SweepDir(sweep_dir)
    manifest = sweep.manifest()
    rows, versions = [], {}
    for entry in manifest["runs"]:
        res = sweep.result(entry["run_id"]) or {}
        row: dict[str, Any] = {"run_id": entry["run_id"]}
        row.update({k: axis_cell(v) for k, v in entry["axes"].items()})
        row["seed"] = entry["seed"]
        row["status"] = res.get("status", "missing")
        row["reason"] = res.get("reason", "")
        code = provenance.run_code(sweep.run_dir(entry["run_id"]))
        row.update(code_columns(code))
        versions[entry["run_id"]] = code["versions"]
        for k, v in res.items():
            if k not in row and not isinstance(v, (dict, list)):
                row[k] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["axes"] = list(manifest["axes"])
    df.attrs["name"] = manifest["name"]
    df.attrs["task"] = manifest.get("task", "train")
    df.attrs["mixed_code"] = provenance.mixed_code(versions)
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
