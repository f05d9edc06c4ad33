"""Sweeps: a YAML spec → validated runs (id = content hash) → a launcher backend (SLURM job arrays,
local processes, in-process debug; :mod:`focalexp.sweep.backends`) → run dirs → status, cancel, collect
(pandas), report (tables, figures).

Python API::

    from focalexp.sweep import load_spec, expand, launch, status, cancel, collect, report
    spec = load_spec("experiments/focal_levels.yaml")
    outcome = launch(spec, "sweeps/focal_levels")     # submits (SLURM) or runs (local)
    df = collect("sweeps/focal_levels")                # one row per run
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError
from .backends import backend_names, get_backend, register_backend, resolve_backend
from .collect import collect, summarize
from .reporting import report
from .follow import SETTLED, DryRun, dry_run, wait
from .spec import Run, SweepSpec, axis_keys, expand, load_spec, parse_spec
from .status import RunState, counts, run_states
from .store import SweepDir

if TYPE_CHECKING:
    from .launcher import CancelOutcome, LaunchOutcome

__all__ = ["load_spec", "parse_spec", "expand", "launch", "status", "cancel", "collect", "report", "summarize",
           "estimate", "estimate_totals", "preflight", "dry_run", "DryRun", "wait", "SETTLED", "SweepSpec", "Run", "RunState", "SweepDir", "axis_keys",
           "counts", "LaunchOutcome", "CancelOutcome", "register_backend", "get_backend", "backend_names"]


def __getattr__(name: str) -> Any:
    # the launcher (and submitit with it) loads on first use: the CLI reads the backend registry for --help
    if name in ("LaunchOutcome", "CancelOutcome"):
        from . import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module 'focalexp.sweep' has no attribute '{name}'")


def status(sweep_dir: str | Path) -> list[RunState]:
    """Per-run state of the sweep in ``sweep_dir`` (never blocks on a job)."""
    return run_states(SweepDir(sweep_dir))


def cancel(sweep_dir: str | Path, run_ids: list[str] | None = None) -> CancelOutcome:
    """Stop the queued and running jobs of the sweep in ``sweep_dir`` (all, or those of ``run_ids``), each
    through the backend that runs it (SLURM: scancel; local: SIGINT as Ctrl-C, a training run saves
    last.pth and stops; debug: nothing runs outside its launcher). Their runs then read ``cancelled``;
    ``launch(..., retry_failed=True)`` resubmits them, and a trained run continues from its checkpoint."""
    from .launcher import cancel_runs

    return cancel_runs(SweepDir(sweep_dir), run_ids)


def preflight(spec: SweepSpec, sweep_dir: str | Path, *, allow_setup: bool = False) -> str:
    """Every check that needs no run: the sweep dir (a directory that is ours or new), the launcher's
    request against the machines of its backend (cores, memory, GPUs, nodes, partition) and shell setup
    lines. Nothing is written. Returns the name of the backend the sweep goes to."""
    from ..fileio import output_dir

    backend = resolve_backend(spec.launcher.cluster)
    sweep = SweepDir(output_dir(sweep_dir, "--dir"))
    if sweep.path.is_dir() and sweep.manifest_path.exists():
        old = sweep.manifest()
        if old.get("name") != spec.name:
            raise ConfigError(f"--dir: '{sweep.path}' holds sweep '{old.get('name')}', not '{spec.name}'; "
                              "choose another dir")
    backend.check(spec.launcher, allow_setup=allow_setup)
    return backend.name


def launch(spec: SweepSpec, sweep_dir: str | Path, *, runs: list[Run] | None = None, cluster: str | None = None,
           retry_failed: bool = False, progress: Callable[[int, int], None] | None = None,
           allow_setup: bool = False) -> LaunchOutcome:
    """Submit the runs of ``spec`` that need it into ``sweep_dir`` (see :mod:`focalexp.sweep.launcher`).
    ``cluster``: a backend name or ``auto`` (overrides ``spec.launcher.cluster``). ``allow_setup``: run the
    spec's ``launcher.setup`` shell lines (refused otherwise)."""
    from .launcher import launch_runs

    if cluster is not None:
        spec.launcher.cluster = cluster
    backend = get_backend(preflight(spec, sweep_dir, allow_setup=allow_setup))
    runs = runs if runs is not None else expand(spec)
    return launch_runs(spec, SweepDir(sweep_dir), runs, backend, retry_failed=retry_failed, progress=progress)


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
