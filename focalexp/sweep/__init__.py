"""Sweeps: a YAML spec → validated runs (id = content hash) → submitit (SLURM arrays, local, debug)
→ run dirs → status, collect (pandas), report (tables, figures).

Python API::

    from focalexp.sweep import load_spec, expand, launch, status, collect, report
    spec = load_spec("experiments/focal_levels.yaml")
    outcome = launch(spec, "sweeps/focal_levels")     # submits (SLURM) or runs (local)
    df = collect("sweeps/focal_levels")                # one row per run
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .collect import collect, report, summarize
from .spec import Run, SweepSpec, axis_keys, expand, load_spec, parse_spec
from .status import RunState, counts, run_states
from .store import SweepDir

__all__ = ["load_spec", "parse_spec", "expand", "launch", "status", "collect", "report", "summarize",
           "estimate", "preflight", "SweepSpec", "Run", "RunState", "SweepDir", "axis_keys", "counts", "LaunchOutcome"]


def status(sweep_dir: str | Path) -> list[RunState]:
    """Per-run state of the sweep in ``sweep_dir`` (never blocks on a job)."""
    return run_states(SweepDir(sweep_dir))


@dataclass
class LaunchOutcome:
    cluster: str
    submitted: list[str] = field(default_factory=list)  # run ids
    skipped: dict[str, list[str]] = field(default_factory=dict)  # state -> run ids
    job_ids: list[str] = field(default_factory=list)


def preflight(spec: SweepSpec, sweep_dir: str | Path, *, allow_setup: bool = False) -> str:
    """Every check that needs no run: the sweep dir (a directory that is ours or new), the launcher's
    request against the machines (cores, memory, GPUs, nodes, partition) and shell setup lines. Nothing
    is written. Returns the cluster the sweep goes to."""
    from ..fileio import output_dir
    from .launcher import check_launcher, ensure_importable_on_nodes, resolve_cluster

    which = resolve_cluster(spec.launcher)
    sweep = SweepDir(output_dir(sweep_dir, "--dir"))
    if sweep.path.is_dir() and sweep.manifest_path.exists():
        old = sweep.manifest()
        if old.get("name") != spec.name:
            raise ConfigError(f"--dir: '{sweep.path}' holds sweep '{old.get('name')}', not '{spec.name}'; "
                              "choose another dir")
    check_launcher(spec.launcher, which, allow_setup=allow_setup)
    ensure_importable_on_nodes(which)
    return which


def launch(spec: SweepSpec, sweep_dir: str | Path, *, runs: list[Run] | None = None, cluster: str | None = None,
           retry_failed: bool = False, progress: Callable[[int, int], None] | None = None,
           allow_setup: bool = False) -> LaunchOutcome:
    """Submit the runs of ``spec`` that need it into ``sweep_dir`` (see :mod:`focalexp.sweep.launcher`).
    ``allow_setup``: run the spec's ``launcher.setup`` shell lines (refused otherwise)."""
    from .launcher import current_states, plan, submit_runs

    if cluster is not None:
        spec.launcher.cluster = cluster
    which = preflight(spec, sweep_dir, allow_setup=allow_setup)
    runs = runs if runs is not None else expand(spec)
    sweep = SweepDir(sweep_dir)
    with sweep.lock():
        states = current_states(sweep)
        p = plan(runs, states, retry_failed)
        sweep.write_manifest(spec, runs, which)
        out = LaunchOutcome(which, [r.run_id for r in p.submit], p.skip)
        if p.submit:
            jobs = submit_runs(spec, sweep, p.submit, which, progress)
            out.job_ids = [str(j.job_id) for j in jobs]
    return out


def estimate(spec: SweepSpec, runs: list[Run]) -> list[dict[str, Any]]:
    """Compute per run: GMACs per image, images per epoch, and training GMACs (3 x forward, the usual
    fwd + bwd rule) x images x epochs, with GPU-hours at ``spec.estimate.gpu_tflops``."""
    from ..analysis.flops import measure_flops, model_for_counting
    from ..models.factory import resolve_config

    cache: dict[str, float] = {}
    rows = []
    for r in runs:
        key = repr(sorted(r.config["model"].items()))
        if key not in cache:
            mcfg = resolve_config(r.config["model"])
            cache[key] = measure_flops(model_for_counting(mcfg), mcfg.img_size, cross_check=False).gmacs
        gmacs = cache[key]
        images = _images_per_epoch(spec, r.config)
        row = {"run_id": r.run_id, "gmacs": gmacs, "images": images}
        if r.task == "train" and images:
            epochs = r.config["train"]["epochs"]
            total = 3 * gmacs * images * epochs
            row.update(epochs=epochs, train_pmacs=total / 1e6,
                       gpu_hours=2 * total * 1e9 / (spec.estimate.gpu_tflops * 1e12) / 3600)
        rows.append(row)
    return rows


def _images_per_epoch(spec: SweepSpec, cfg: dict[str, Any]) -> int | None:
    if spec.estimate.train_images:
        return spec.estimate.train_images
    data = cfg["data"]
    if data.get("train_size"):
        return data["train_size"]
    return {"pathfinder": 20000, "cifar10": 50000, "cifar100": 50000}.get(
        data["dataset"], 1281167 if cfg["model"].get("num_classes") == 1000 else None)
