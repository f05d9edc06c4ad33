"""Submit a sweep's runs through submitit: SLURM job arrays (returns at once), or local processes
(throttled, followed to the end), or in-process (debug).

Re-running is safe and idempotent: runs that are done are skipped, queued/running ones are left
alone, missing and stopped ones are (re)submitted, failed and cancelled ones only with
``retry_failed``. Every submission is logged to ``jobs.jsonl`` before and after it happens.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, FocalexpError, did_you_mean
from ..fileio import usable_cores
from .job import RunJob
from .spec import LauncherConfig, Run, SweepSpec
from .status import RunState, run_states
from .store import SweepDir

DEFAULT_MAX_ARRAY = 1001


def resolve_cluster(lc: LauncherConfig) -> str:
    has_srun = shutil.which("srun") is not None
    if lc.cluster == "auto":
        return "slurm" if has_srun else "local"
    if lc.cluster == "slurm" and not has_srun:
        raise ConfigError("launcher.cluster: 'slurm' but srun is not on PATH here (no SLURM client); "
                          "use 'local' or 'auto'")
    return lc.cluster


def machine_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sinfo_nodes() -> list[dict[str, Any]] | None:
    """Partitions and node sizes as SLURM reports them (None when sinfo cannot answer)."""
    try:
        p = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%P|%m|%c"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    nodes = []
    for line in p.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        try:
            nodes.append({"node": parts[0], "partition": parts[1].rstrip("*"), "mem_gb": int(parts[2]) / 1024,
                          "cpus": int(parts[3])})
        except ValueError:
            continue
    return nodes or None


def check_launcher(lc: LauncherConfig, cluster: str, *, allow_setup: bool = False) -> None:
    """Refuse, before anything is written or submitted, a request that no machine here can meet, and shell
    lines (``launcher.setup``) that a spec file would run unless the caller allows them."""
    if lc.setup and not allow_setup:
        raise ConfigError(f"launcher.setup: the spec asks to run {len(lc.setup)} shell line(s) before each job "
                          f"({lc.setup[0][:60]!r}); a spec file runs no commands unless you pass --allow-setup "
                          "(Python: launch(..., allow_setup=True))")
    if cluster in ("local", "debug"):
        if lc.nodes != 1:
            raise ConfigError(f"launcher.nodes: a local run has one node, got {lc.nodes}; use cluster slurm for more")
        cores = usable_cores()
        if lc.cpus_per_task and lc.cpus_per_task * lc.tasks_per_node > cores:
            raise ConfigError(f"launcher.cpus_per_task: {lc.cpus_per_task} x {lc.tasks_per_node} task(s) but this "
                              f"machine has {cores} cores; at most {max(1, cores // lc.tasks_per_node)}")
        mem = machine_memory_gb()
        if lc.mem_gb is not None and mem is not None and lc.mem_gb > mem:
            raise ConfigError(f"launcher.mem_gb: {lc.mem_gb:g} GB but this machine has {mem:.1f} GB")
        if lc.gpus_per_node:
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if lc.gpus_per_node > n:
                raise ConfigError(f"launcher.gpus_per_node: {lc.gpus_per_node} but this machine has "
                                  + ("no GPU" if n == 0 else f"{n} GPU(s)") + "; use 0, or cluster slurm")
        return
    if cluster != "slurm":
        return
    nodes = _sinfo_nodes()
    if nodes is None:
        return
    parts = sorted({n["partition"] for n in nodes})
    if lc.partition is not None:
        if lc.partition not in parts:
            raise ConfigError(f"launcher.partition: '{lc.partition}' is not a partition of this cluster"
                              f"{did_you_mean(lc.partition, parts)}; partitions: {', '.join(parts)}")
        nodes = [n for n in nodes if n["partition"] == lc.partition]
    where = f"partition '{lc.partition}'" if lc.partition else "this cluster"
    mem = max(n["mem_gb"] for n in nodes)
    if lc.mem_gb is not None and mem > 0 and lc.mem_gb > mem:
        raise ConfigError(f"launcher.mem_gb: {lc.mem_gb:g} GB but the largest node of {where} has {mem:.1f} GB")
    cpus = max(n["cpus"] for n in nodes)
    if lc.cpus_per_task and lc.cpus_per_task * lc.tasks_per_node > cpus:
        raise ConfigError(f"launcher.cpus_per_task: {lc.cpus_per_task} x {lc.tasks_per_node} task(s) but the "
                          f"largest node of {where} has {cpus} CPUs")
    count = len({n["node"] for n in nodes})
    if lc.nodes > count:
        raise ConfigError(f"launcher.nodes: {lc.nodes} but {where} has {count} node(s)")


def max_array_size(lc: LauncherConfig) -> int:
    if lc.max_array_size:
        return lc.max_array_size
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY
    for line in out.splitlines():
        if line.strip().startswith("MaxArraySize"):
            try:
                return int(line.split("=")[1])
            except (IndexError, ValueError):
                break
    return DEFAULT_MAX_ARRAY


def local_parallelism(lc: LauncherConfig) -> int:
    if lc.array_parallelism:
        return lc.array_parallelism
    cores = usable_cores()
    return max(1, cores // (lc.cpus_per_task or cores))


def task_settings(spec: SweepSpec) -> dict[str, Any]:
    from ..tasks import get_task

    return get_task(spec.task).settings(spec.launcher, spec.task_options)


def make_executor(spec: SweepSpec, sweep: SweepDir, cluster: str):
    import submitit

    lc = spec.launcher
    ex = submitit.AutoExecutor(folder=str(sweep.logs / "%j"), cluster=cluster,
                               **({"slurm_max_num_timeout": lc.max_num_timeout} if cluster == "slurm" else {}))
    params: dict[str, Any] = {"name": f"fx-{spec.name}", "timeout_min": lc.timeout_min, "nodes": lc.nodes,
                              "tasks_per_node": lc.tasks_per_node}
    if lc.gpus_per_node:
        params["gpus_per_node"] = lc.gpus_per_node
    if lc.cpus_per_task:
        params["cpus_per_task"] = lc.cpus_per_task
    if cluster == "slurm":
        if lc.mem_gb is not None:
            params["mem_gb"] = lc.mem_gb
        for k in ("partition", "account", "qos", "constraint"):
            if getattr(lc, k):
                params[f"slurm_{k}"] = getattr(lc, k)
        params["slurm_signal_delay_s"] = lc.signal_delay_s
        params["slurm_array_parallelism"] = lc.array_parallelism or 256
        if lc.setup:
            params["slurm_setup"] = list(lc.setup)
    elif cluster == "local" and lc.setup:
        params["local_setup"] = list(lc.setup)
    ex.update_parameters(**params)
    return ex


@dataclass
class Plan:
    submit: list[Run]
    skip: dict[str, list[str]]  # state -> run ids left alone


def plan(runs: list[Run], states: dict[str, RunState], retry_failed: bool) -> Plan:
    submit, skip = [], {}
    for r in runs:
        st = states.get(r.run_id)
        state = st.state if st else "missing"
        again = state in ("missing", "stopped") or (retry_failed and state in ("failed", "cancelled"))
        if again:
            submit.append(r)
        else:
            skip.setdefault(state, []).append(r.run_id)
    return Plan(submit, skip)


def _job_event(job: Any, run: Run, cluster: str) -> dict[str, Any]:
    ev = {"event": "submitted", "run_id": run.run_id, "job_id": str(job.job_id), "cluster": cluster}
    try:
        paths = job.paths
        ev.update(stdout=str(paths.stdout), stderr=str(paths.stderr), result_pickle=str(paths.result_pickle))
    except Exception:  # noqa: BLE001 - debug jobs have no files
        pass
    if cluster == "local":
        ev["pid"] = int(job.job_id)
    return ev


def _prepare_retry(sweep: SweepDir, run: Run) -> None:
    """A failed/cancelled run's result.json is moved aside so that its new job is judged afresh."""
    rd = sweep.run_dir(run.run_id)
    res = rd / "result.json"
    if res.exists():
        n = len(list(rd.glob("result.failed*.json")))
        os.replace(res, rd / f"result.failed{n}.json")


def submit_runs(spec: SweepSpec, sweep: SweepDir, runs: list[Run], cluster: str,
                progress: Callable[[int, int], None] | None = None) -> list[Any]:
    """Submit ``runs``; SLURM: arrays (split at MaxArraySize), returns at once. Local: at most
    ``array_parallelism`` at a time, returns when all ended. Debug: one after another, in-process."""
    ex = make_executor(spec, sweep, cluster)
    settings = task_settings(spec)

    def args(r: Run) -> tuple:
        return (r.task, r.config, str(sweep.run_dir(r.run_id).resolve()), settings)

    for r in runs:
        _prepare_retry(sweep, r)
    if cluster == "slurm":
        import submitit

        jobs: list[Any] = []
        chunk = max_array_size(spec.launcher)
        for i in range(0, len(runs), chunk):
            part = runs[i:i + chunk]
            for r in part:
                sweep.record(event="submitting", run_id=r.run_id, cluster=cluster)
            # sbatch hands the caller's environment to the job: SLURM_* of an enclosing job would leak in
            with submitit.helpers.clean_env(), ex.batch():
                part_jobs = [ex.submit(RunJob(), *args(r)) for r in part]
            for r, j in zip(part, part_jobs):
                sweep.record(**_job_event(j, r, cluster))
            jobs.extend(part_jobs)
        return jobs
    if cluster == "debug":
        jobs = []
        for k, r in enumerate(runs):
            sweep.record(event="submitting", run_id=r.run_id, cluster=cluster)
            j = ex.submit(RunJob(), *args(r))
            sweep.record(**_job_event(j, r, cluster))
            try:
                j.result()
            except Exception:  # noqa: BLE001 - the run dir says how it failed
                pass
            jobs.append(j)
            if progress:
                progress(k + 1, len(runs))
        return jobs
    return _local_throttled(ex, sweep, runs, args, local_parallelism(spec.launcher), progress)


def _local_throttled(ex, sweep: SweepDir, runs: list[Run], args, parallel: int, progress) -> list[Any]:
    import submitit

    pending = list(runs)
    active: list[Any] = []
    finished: list[Any] = []
    try:
        while pending or active:
            while pending and len(active) < parallel:
                r = pending.pop(0)
                sweep.record(event="submitting", run_id=r.run_id, cluster="local")
                with submitit.helpers.clean_env():  # a sweep launched from inside a job stays local
                    j = ex.submit(RunJob(), *args(r))
                sweep.record(**_job_event(j, r, "local"))
                active.append(j)
            time.sleep(0.5)
            for j in [j for j in active if j.done()]:
                active.remove(j)
                finished.append(j)
                if progress:
                    progress(len(finished), len(runs))
    except KeyboardInterrupt:
        # the runs got the same Ctrl-C (one process group): they save last.pth and stop; wait for that
        deadline = time.time() + 60
        while active and time.time() < deadline:
            active = [j for j in active if not j.done()]
            time.sleep(0.5)
        raise
    return finished


def current_states(sweep: SweepDir) -> dict[str, RunState]:
    if not sweep.exists():
        return {}
    return {s.run_id: s for s in run_states(sweep)}


@functools.lru_cache(maxsize=1)
def _installed_in_interpreter() -> bool:
    """Whether this interpreter imports focalexp outside this checkout's directory (asked once per process:
    ``preflight`` and ``launch`` both need it)."""
    probe = subprocess.run([sys.executable, "-c", "import focalexp, sys; print(focalexp.__file__)"],
                           capture_output=True, text=True, cwd="/", timeout=60)
    return probe.returncode == 0


def ensure_importable_on_nodes(cluster: str) -> None:
    """Jobs unpickle focalexp on the node with this interpreter: it must be installed, not just on sys.path."""
    if cluster != "slurm":
        return
    here = Path(__file__).resolve().parents[1]
    if not _installed_in_interpreter():
        raise FocalexpError(f"focalexp is not installed in {sys.executable} (jobs import it on the nodes); "
                            f"run `pip install -e {here.parent}`")
