"""What runs on the node: claim the run dir, then run the task (:mod:`focalexp.tasks`) by name.

The job carries the task's name and the run's resolved config as plain data; the task rebuilds its
typed config without validating it again (the spec's expansion did, once). A run
dir is claimed before the task starts (``claim.json``, under a file lock): if a live job already holds
it — a launcher killed between submitting and recording its jobs, then run again, submits a second
copy — the newcomer leaves without touching anything, so every run is executed exactly once. A
requeued job keeps its job id and so keeps its claim; a dead holder's claim is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

import submitit

def _job_id() -> str:
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not inside a submitit job (tests, in-process use)
        return f"pid{os.getpid()}"


def _slurm_job_alive(job_id: str) -> bool | None:
    """True/False from squeue; None when squeue cannot tell (no SLURM here)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def holder_alive(claim: Mapping[str, Any]) -> bool:
    if claim.get("slurm"):
        alive = _slurm_job_alive(str(claim["job_id"]))
        if alive is not None:
            return alive
    if claim.get("host") == socket.gethostname():
        return pid_alive(int(claim.get("pid", -1)))
    return True  # another host, no scheduler to ask: assume it lives


def read_claim(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "claim.json").read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claim_run(run_dir: Path) -> tuple[bool, dict | None]:
    """Claim ``run_dir`` for this job; returns (claimed, the live holder's claim if not)."""
    me = {"job_id": _job_id(), "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
          "slurm": "SLURM_JOB_ID" in os.environ}
    with _locked(run_dir / ".claim.lock"):
        old = read_claim(run_dir)
        if old and old.get("job_id") != me["job_id"] and holder_alive(old):
            return False, old
        tmp = run_dir / f".claim.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(me))
        os.replace(tmp, run_dir / "claim.json")
    return True, None


class RunJob(submitit.helpers.Checkpointable):
    """``RunJob()(task, config, run_dir, settings)``: one run of a sweep, requeued on preemption/time-out
    (submitit calls :meth:`checkpoint`, inherited: resubmit the same call; the task resumes from the run
    dir's ``last.pth``)."""

    def __call__(self, task: str, config: Mapping[str, Any], run_dir: str, settings: Mapping[str, Any]) -> dict:
        from ..tasks import get_task

        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        ok, holder = claim_run(out)
        if not ok:
            return {"status": "duplicate", "reason": f"job {holder['job_id']} holds this run"}
        t = get_task(task)
        return t.run(t.from_plain(config), str(out), dict(settings))
