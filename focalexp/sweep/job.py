"""What runs on the node: claim the run dir, then run the task (:mod:`focalexp.tasks`) by name.

The job carries the task's name and the run's resolved config as plain data; the task rebuilds its
typed config without validating it again (the spec's expansion did, once). A run
dir is claimed before the task starts (``claim.json``, under a file lock): if a live job already holds
it — a launcher killed between submitting and recording its jobs, then run again, submits a second
copy — the newcomer leaves without touching anything, so every run is executed exactly once. A
requeued job keeps its job id and so keeps its claim; a dead holder's claim is taken over. A job that
``cancel.json`` names (written by ``focalexp cancel`` before it signals the job) does not start its task.
Every attempt that starts the task (the first, each resume and requeue) appends to the run dir's
``provenance.json`` (:mod:`focalexp.provenance`; the first process of the job only).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import submitit

from ..fileio import atomic_write_text, file_lock


def _job() -> tuple[str, str | None]:
    """This job's id and backend (submitit's name for it: slurm, local, debug)."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (tests, in-process use)
        return f"pid{os.getpid()}", None
    return str(env.job_id), env.cluster


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
    """Whether the job holding a claim lives: its backend's scheduler says so where it can (SLURM's
    squeue), else its pid on this host; a holder on another host that no scheduler knows is assumed alive."""
    from .backends import find_backend

    name = claim.get("backend") or ("slurm" if claim.get("slurm") else None)  # "slurm": claims before backends
    backend = find_backend(name) if isinstance(name, str) else None
    if backend is not None:
        alive = backend.job_alive(str(claim.get("job_id")))
        if alive is not None:
            return alive
    if claim.get("host") == socket.gethostname():
        try:
            pid = int(claim.get("pid", 0))
        except (TypeError, ValueError):
            return False
        return pid > 1 and pid_alive(pid)
    return True  # another host, no scheduler to ask: assume it lives


def read_claim(run_dir: Path) -> dict | None:
    try:
        claim = json.loads((run_dir / "claim.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return claim if isinstance(claim, dict) else None


def claim_run(run_dir: Path) -> tuple[bool, dict | None]:
    """Claim ``run_dir`` for this job; returns (claimed, the live holder's claim if not)."""
    job_id, backend = _job()
    me = {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "backend": backend}
    with file_lock(run_dir / ".claim.lock"):
        old = read_claim(run_dir)
        if old and old.get("job_id") != me["job_id"] and holder_alive(old):
            return False, old
        atomic_write_text(run_dir / "claim.json", json.dumps(me))
    return True, None


def request_cancel(run_dir: Path, job_id: str) -> None:
    """Record in the run dir (``cancel.json``) that ``job_id`` is cancelled, before its processes are told:
    the job does not start its task if it has not yet (and status reads the run as cancelled)."""
    atomic_write_text(run_dir / "cancel.json", json.dumps({"job_id": str(job_id), "time": time.time()}))


def cancelled_job(run_dir: Path) -> str | None:
    """The job id that ``cancel.json`` names, if any (a user file: anything else reads as none)."""
    try:
        mark = json.loads((run_dir / "cancel.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return str(mark["job_id"]) if isinstance(mark, dict) and isinstance(mark.get("job_id"), (str, int)) else None


@contextlib.contextmanager
def _interruptible():
    """SIGINT raises KeyboardInterrupt here even where the launcher was started with SIGINT ignored (a
    background job of a shell script): `focalexp cancel` stops a local task with it, as Ctrl-C would."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) \
            if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else None
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _first_process() -> bool:
    try:
        return submitit.JobEnvironment().global_rank == 0
    except RuntimeError:
        return True


class RunJob(submitit.helpers.Checkpointable):
    """``RunJob()(task, config, run_dir, settings, origin)``: one run of a sweep, requeued on
    preemption/time-out (submitit calls :meth:`checkpoint`, inherited: resubmit the same call; the task
    resumes from the run dir's ``last.pth``). ``origin``: the submission's ``cwd``, ``argv``, ``time`` and
    ``snapshot`` (the code snapshot the job was sent from, or None), for the run's provenance; a job sent
    from a snapshot returns to ``cwd`` before its task starts (relative paths mean what they meant)."""

    def __call__(self, task: str, config: Mapping[str, Any], run_dir: str, settings: Mapping[str, Any],
                 origin: Mapping[str, Any] | None = None) -> dict:
        from .. import provenance
        from ..tasks import get_task

        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        with _interruptible():
            job_id, backend = _job()
            if cancelled_job(out) == job_id:  # checked after SIGINT works: a cancel lands either way
                return {"status": "cancelled", "reason": f"job {job_id} was cancelled before it started"}
            ok, holder = claim_run(out)
            if not ok:
                return {"status": "duplicate", "reason": f"job {holder['job_id']} holds this run"}
            origin = dict(origin or {})
            if origin.get("snapshot") and isinstance(origin.get("cwd"), str) and os.path.isdir(origin["cwd"]):
                os.chdir(origin["cwd"])
            if _first_process():
                provenance.record_attempt(out, origin, {"id": job_id, "backend": backend})
            t = get_task(task)
            return t.run(t.from_plain(config), str(out), dict(settings))
