"""Where every run of a sweep stands, from the run dirs and the backends; never waits on a job.

The run dir's ``result.json`` has the last word on done/failed. A run with a job recorded and no final
result is judged by the backend that ran it (:meth:`Backend.states
<focalexp.sweep.backends.Backend.states>`: one batched question to its scheduler for all its runs):
SLURM asks ``sacct`` (``squeue`` fills in), local reads the run's claim, the job's process and the exit
record its controller leaves. Job files are read only inside the sweep dir, submitit's result pickles only
as plain data.

Killed is not failed: ``failed`` is a task that raised (its result says so, or submitit pickled its
exception); a job that ended with neither a result nor an exception was ``killed`` (a signal, the OOM killer,
a lost node, its launcher's process group) or hit its time limit (``timeout``). A re-run of the same command
resubmits those, at most ``launcher.max_retries`` times in a row (:func:`retry_hold`); every submission of a
run is counted (``attempts``) from ``jobs.jsonl``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import inside
from .backends import JobState, find_backend
from .store import SweepDir

STATES = ("done", "running", "queued", "requeued", "stopped", "killed", "timeout", "failed", "cancelled", "missing",
          "unknown")
TERMINAL = ("done", "failed", "cancelled")
RETRIED = ("killed", "timeout")  # endings a re-run resubmits by itself, up to launcher.max_retries in a row
DEFAULT_MAX_RETRIES = 2  # LauncherConfig.max_retries, for a sweep dir whose spec.yaml does not say


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
    attempts: int = 0  # submissions of this run recorded in jobs.jsonl
    # killed/timed-out endings since the last --retry-failed that count toward launcher.max_retries (this
    # one included), and how many of them were for out of memory
    kills: int = 0
    oom_kills: int = 0
    oom: bool = False  # this ending: killed for out of memory (the scheduler or the kernel says so)
    charged: bool = True  # this ending counts toward launcher.max_retries (not: the whole local job vanished)

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


def history(sweep: SweepDir) -> dict[str, list[dict[str, Any]]]:
    """run id -> its "submitted" events from jobs.jsonl, oldest first (one per attempt)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in sweep.events():
        if e.get("event") == "submitted" and isinstance(e.get("job_id"), (str, int)):
            out.setdefault(e["run_id"], []).append(e)
    return out


def _tally(st: RunState, events: list[dict[str, Any]]) -> None:
    """``st.kills`` and ``st.oom_kills``: the charged killed/timed-out endings since the run was last
    resubmitted with --retry-failed (each resubmission records the ending before it), this one included."""
    since = events
    for i, e in enumerate(events):
        if e.get("forced") is True:
            since = events[i + 1:]
    before = [e for e in since if e.get("after") in RETRIED and e.get("charged", True) is True]
    now = st.state in RETRIED and st.charged
    st.kills = len(before) + now
    st.oom_kills = sum(e.get("oom") is True for e in before) + (now and st.oom)


def retry_hold(st: RunState, max_retries: int) -> str | None:
    """Why a re-run of the same command leaves this killed or timed-out run alone (None: it resubmits it):
    killed twice for out of memory, or killed/timed out more than ``max_retries`` times in a row.
    ``--retry-failed`` resubmits it anyway and starts the count again."""
    if st.state not in RETRIED:
        return None
    if st.oom_kills >= 2:
        return f"killed for out of memory {st.oom_kills} times; raise launcher.mem_gb (--retry-failed tries again)"
    if st.kills > max_retries:
        return (f"killed or timed out {st.kills} times in a row (launcher.max_retries: {max_retries}); "
                "--retry-failed tries again")
    return None


def max_retries(sweep: SweepDir) -> int:
    """``launcher.max_retries`` of the sweep's spec.yaml (a user file: anything odd reads as the default)."""
    import yaml

    try:
        v = yaml.safe_load((sweep.path / "spec.yaml").read_text())["launcher"]["max_retries"]
    except Exception:  # noqa: BLE001 - no spec.yaml (older sweeps), or not ours
        return DEFAULT_MAX_RETRIES
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else DEFAULT_MAX_RETRIES


def run_states(sweep: SweepDir) -> list[RunState]:
    manifest = sweep.manifest()
    past = history(sweep)
    jobs = {rid: evs[-1] for rid, evs in past.items()}
    states, results, undecided = [], {}, {}  # undecided: backend name -> {run id: its job}
    for entry in manifest["runs"]:
        rid = entry["run_id"]
        st = RunState(rid, entry["axes"], entry["seed"], "missing")
        st.result = results[rid] = res = sweep.result(rid)
        st.attempts = len(past.get(rid, []))
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
    bound = max_retries(sweep) if any(v.state in RETRIED for v in verdicts.values()) else DEFAULT_MAX_RETRIES
    for st in states:
        v = verdicts.get(st.run_id)
        if v is not None:
            st.state, st.reason, st.scheduler_state = v.state, v.reason, v.scheduler_state
            st.oom, st.charged = v.oom, v.charged
        _tally(st, past.get(st.run_id, []))
        hold = retry_hold(st, bound)
        if hold:
            st.reason = f"{hold}; {st.reason}" if st.reason else hold
        if st.state in ("failed", "cancelled", "killed", "timeout"):
            st.log_tail = log_tail(st.log, sweep)
    return states


def counts(states: list[RunState]) -> dict[str, int]:
    c = {s: 0 for s in STATES}
    for st in states:
        c[st.state] += 1
    return {k: v for k, v in c.items() if v}
