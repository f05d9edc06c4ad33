"""Where every run of a sweep stands, from the run dirs and the backends; never waits on a job.

The run dir's ``result.json`` has the last word on done/failed. A run with a job recorded and no final
result is judged by the backend that ran it (:meth:`Backend.states
<focalexp.sweep.backends.Backend.states>`: one batched question to its scheduler for all its runs):
SLURM asks ``sacct`` (``squeue`` fills in), local reads the run's claim and the job's process. Job
files are read only inside the sweep dir, submitit's result pickles only as plain data.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import inside
from .backends import JobState, find_backend
from .store import SweepDir

STATES = ("done", "running", "queued", "requeued", "stopped", "failed", "cancelled", "missing", "unknown")
TERMINAL = ("done", "failed", "cancelled")


@dataclass
class RunState:
    run_id: str
    axes: dict[str, Any]
    seed: int
    state: str
    job_id: str | None = None
    scheduler_state: str | None = None
    reason: str = ""
    log: str | None = None
    log_tail: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def in_sweep(sweep: SweepDir, raw: Any) -> Path | None:
    """A path recorded in jobs.jsonl (a user file), if it names a place inside the sweep dir."""
    return inside(sweep.path, Path(raw).absolute()) if isinstance(raw, str) and raw else None


def log_tail(path: str | None, sweep: SweepDir, n: int = 15) -> list[str]:
    """The last lines of a job log; only a file inside the sweep dir is read (jobs.jsonl is a user file)."""
    p = in_sweep(sweep, path)
    if p is None:
        return []
    try:
        with open(p, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return lines[-n:]


def submitit_error(event: dict[str, Any], sweep: SweepDir) -> str | None:
    """The last line of the remote traceback submitit pickled, if the job raised. The pickle is read through
    the plain-data allowlist (no globals at all), and only from inside the sweep dir."""
    from .. import unpickle

    p = in_sweep(sweep, event.get("result_pickle"))
    if p is None or not p.is_file() or p.stat().st_size > 16 * 2**20:
        return None
    try:
        obj = unpickle.loads(p.read_bytes(), unpickle.PLAIN)
        kind, value = obj
    except Exception:  # noqa: BLE001 - a half-written or foreign pickle is no error report
        return None
    if kind != "error":
        return None
    lines = [ln for ln in str(value).strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "error"


def run_states(sweep: SweepDir) -> list[RunState]:
    manifest = sweep.manifest()
    jobs = sweep.latest_jobs()
    states, results, undecided = [], {}, {}  # undecided: backend name -> {run id: its job}
    for entry in manifest["runs"]:
        rid = entry["run_id"]
        st = RunState(rid, entry["axes"], entry["seed"], "missing")
        st.result = results[rid] = res = sweep.result(rid)
        job = jobs.get(rid)
        if job:
            st.job_id, st.log = str(job["job_id"]), job.get("stderr")
        rstat = (res or {}).get("status")
        if rstat == "done":
            st.state = "done"
        elif rstat == "failed":
            st.state, st.reason = "failed", res.get("reason", "")
        elif job is None:
            st.state = "stopped" if rstat in ("running", "interrupted", "stopped") else "missing"
            st.reason = "no job recorded (launcher stopped before recording it?)" if rstat else ""
        else:
            undecided.setdefault(str(job.get("cluster", "local")), {})[rid] = job
        states.append(st)
    verdicts: dict[str, JobState] = {}
    for name, runs in undecided.items():
        backend = find_backend(name)
        if backend is None:
            verdicts.update({rid: JobState("unknown", f"job {runs[rid]['job_id']} went to backend '{name}', "
                                                      "which is not registered here") for rid in runs})
        else:
            verdicts.update(backend.states(sweep, runs, {rid: results[rid] for rid in runs}))
    for st in states:
        v = verdicts.get(st.run_id)
        if v is not None:
            st.state, st.reason, st.scheduler_state = v.state, v.reason, v.scheduler_state
        if st.state in ("failed", "cancelled"):
            st.log_tail = log_tail(st.log, sweep)
    return states


def counts(states: list[RunState]) -> dict[str, int]:
    c = {s: 0 for s in STATES}
    for st in states:
        c[st.state] += 1
    return {k: v for k, v in c.items() if v}
