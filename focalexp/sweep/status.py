"""Where every run of a sweep stands, from the scheduler and the run dirs; never waits on a job.

SLURM: ``sacct`` (one call for all jobs); where accounting is off or a job is too fresh for it,
``squeue`` fills in. A job that neither knows and that left no result is reported as lost, never
waited on. Local: the run dir's claim (the task's pid) and submitit's result pickle. The run dir's
``result.json`` has the last word on done/failed.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .job import holder_alive, read_claim
from ..fileio import inside
from .store import SweepDir

STATES = ("done", "running", "queued", "requeued", "stopped", "failed", "cancelled", "missing", "unknown")
TERMINAL = ("done", "failed", "cancelled")

_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
_REQUEUED = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "RESV_DEL_HOLD"}
_FAILED = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}


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


def _expand_ids(token: str) -> list[str]:
    """``12_[3-5,7%2]`` -> 12_3, 12_4, 12_5, 12_7; plain ids unchanged."""
    m = re.match(r"^(\d+)_\[([^\]]+)\]$", token)
    if not m:
        return [token]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(f"{base}_{i}" for i in range(int(a), int(b) + 1))
        elif part:
            out.append(f"{base}_{part}")
    return out


def _run(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """job id -> (STATE, reason or exit code); from sacct, then squeue for what sacct lacks.
    None when neither command answers (no SLURM client here, controller down)."""
    states: dict[str, tuple[str, str]] = {}
    if not job_ids:
        return states
    bases = sorted({j.split("_")[0] for j in job_ids})
    out = _run(["sacct", "-X", "-P", "-n", "-j", ",".join(bases), "--format", "JobID,State,ExitCode,Reason"])
    for line in (out or "").splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        jid, state, code, reason = parts[:4]
        state = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
        for j in _expand_ids(jid):
            states[j] = (state, f"exit {code}" + (f", {reason}" if reason and reason != "None" else ""))
    missing = [j for j in job_ids if j not in states]
    if missing:
        sq = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r"])
        if out is None and sq is None:
            return None
        for line in (sq or "").splitlines():
            parts = line.split("|")
            if len(parts) == 3:
                for j in _expand_ids(parts[0]):
                    states.setdefault(j, (parts[1], parts[2]))
    return states


def _in_sweep(sweep: SweepDir, raw: Any) -> Path | None:
    """A path recorded in jobs.jsonl (a user file), if it names a place inside the sweep dir."""
    return inside(sweep.path, Path(raw).absolute()) if isinstance(raw, str) and raw else None


def _tail(path: str | None, sweep: SweepDir, n: int = 15) -> list[str]:
    """The last lines of a job log; only a file inside the sweep dir is read (jobs.jsonl is a user file)."""
    p = _in_sweep(sweep, path)
    if p is None:
        return []
    try:
        with open(p, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    return lines[-n:]


def _submitit_error(event: dict[str, Any], sweep: SweepDir) -> str | None:
    """The last line of the remote traceback submitit pickled, if the job raised. The pickle is read through
    the plain-data allowlist (no globals at all), and only from inside the sweep dir."""
    from .. import unpickle

    p = _in_sweep(sweep, event.get("result_pickle"))
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
    slurm_ids = [e["job_id"] for e in jobs.values() if e.get("cluster") == "slurm"]
    sched = slurm_states(slurm_ids)
    states = []
    for entry in manifest["runs"]:
        rid = entry["run_id"]
        st = RunState(rid, entry["axes"], entry["seed"], "missing")
        res = sweep.result(rid)
        st.result = res
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
        elif job.get("cluster") == "slurm" and sched is None:
            st.state, st.reason = "unknown", "the SLURM controller does not answer (sacct and squeue failed)"
        elif job.get("cluster") == "slurm":
            _slurm_state(st, sched.get(st.job_id), job, sweep, rstat)
        else:
            _local_state(st, job, sweep, rstat)
        if st.state in ("failed", "cancelled"):
            st.log_tail = _tail(st.log, sweep)
        states.append(st)
    return states


def _slurm_state(st: RunState, sched: tuple[str, str] | None, job: dict, sweep: SweepDir, rstat: str | None) -> None:
    if sched is None:
        claim = read_claim(sweep.run_dir(st.run_id))
        if claim and holder_alive(claim):
            st.state = "running"
            return
        err = _submitit_error(job, sweep)
        st.state = "failed"
        st.reason = err or f"job {st.job_id} is gone without a result and the scheduler has no record of it"
        return
    state, why = sched
    st.scheduler_state = state
    if state == "PENDING":
        st.state = "requeued" if rstat in ("running", "interrupted") else "queued"
    elif state in _REQUEUED:
        st.state = "requeued"
    elif state in _RUNNING:
        st.state = "running"
    elif state.startswith("CANCELLED"):
        st.state, st.reason = "cancelled", f"job {st.job_id} cancelled ({why})"
    elif state in _FAILED:
        err = _submitit_error(job, sweep)
        st.state, st.reason = "failed", f"{state} ({why})" + (f": {err}" if err else "")
    elif state == "COMPLETED":
        claim = read_claim(sweep.run_dir(st.run_id))
        if claim and claim.get("job_id") != st.job_id and holder_alive(claim):
            st.state = "running"  # this job was a duplicate; the holder is still at it
        else:
            st.state = "stopped" if rstat in ("stopped", "interrupted") else "failed"
            st.reason = (res_reason(sweep, st.run_id) or
                         f"job {st.job_id} completed without writing a result")
    else:
        st.state, st.reason = "failed", f"scheduler state {state} ({why})"


def res_reason(sweep: SweepDir, run_id: str) -> str:
    return (sweep.result(run_id) or {}).get("reason", "")


def _local_state(st: RunState, job: dict, sweep: SweepDir, rstat: str | None) -> None:
    from .job import pid_alive

    claim = read_claim(sweep.run_dir(st.run_id))
    if claim and holder_alive(claim):
        st.state = "running"
        return
    if pid_alive(int(job.get("pid") or -1)) and job.get("cluster") == "local":
        st.state = "queued" if not claim else "running"
        return
    err = _submitit_error(job, sweep)
    if err:
        st.state, st.reason = "failed", err
    elif rstat in ("running", "interrupted", "stopped") or (sweep.run_dir(st.run_id) / "last.pth").exists():
        st.state, st.reason = "stopped", res_reason(sweep, st.run_id) or "stopped before the end; a re-run continues it"
    else:
        st.state, st.reason = "failed", f"job {st.job_id} ended without a result"


def counts(states: list[RunState]) -> dict[str, int]:
    c = {s: 0 for s in STATES}
    for st in states:
        c[st.state] += 1
    return {k: v for k, v in c.items() if v}
