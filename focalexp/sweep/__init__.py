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
from .follow import SETTLED, DryRun, dry_run, wait
from .spec import Run, SweepSpec, axis_keys, expand, load_spec, parse_spec
from .status import RunState, counts, run_states
from .store import SweepDir

__all__ = ["load_spec", "parse_spec", "expand", "launch", "status", "collect", "report", "summarize",
           "estimate", "estimate_totals", "preflight", "dry_run", "DryRun", "wait", "SETTLED", "SweepSpec", "Run", "RunState", "SweepDir", "axis_keys", "counts", "LaunchOutcome"]


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
    """Per run, what the task says it costs: GMACs per image (the papers' convention, without torch for
    FocalNet configs), images per epoch, training PMACs (3 x forward x images x epochs) and, for runs
    that use GPUs, GPU-hours at ``spec.estimate.gpu_tflops``."""
    from ..tasks import get_task

    task = get_task(spec.task)
    rows = []
    for r in runs:
        typed = r.typed if r.typed is not None else task.from_plain(r.config)
        row = {"run_id": r.run_id, **task.estimate(typed, spec.task_options, spec.estimate)}
        if not task.uses_gpu(typed, spec.launcher):
            row.pop("gpu_hours", None)
        rows.append(row)
    return rows


def estimate_totals(spec: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's compute from :func:`estimate`'s rows: runs, training PMACs, GPU-hours (None when no run
    uses a GPU), GPUs per run and the wall hours of one run on them."""
    n = len(rows)
    pmacs = sum(r.get("train_pmacs") or 0 for r in rows)
    gpu_rows = [r for r in rows if "gpu_hours" in r]
    gpus = spec.launcher.nodes * max(1, spec.launcher.gpus_per_node)
    gh = sum(r["gpu_hours"] for r in gpu_rows) if gpu_rows else None
    return {"runs": n, "train_pmacs": pmacs if any("train_pmacs" in r for r in rows) else None,
            "gpu_hours": gh, "gpus_per_run": gpus if gpu_rows else 0,
            "hours_per_run": gh / len(gpu_rows) / gpus if gh is not None else None,
            "gpu_tflops": spec.estimate.gpu_tflops}
