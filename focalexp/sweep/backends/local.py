"""Local processes through submitit: at most ``array_parallelism`` runs at a time on this machine; the
launcher follows them to the end (Ctrl-C stops them with a checkpoint).

State: the run dir's claim (the task's host and pid) and the job's process, then submitit's result
pickle (read as plain data, only inside the sweep dir), then the exit record the job's controller leaves
(:mod:`.local_controller`: the signal that killed a task, the OOM killer, a time-out). Cancel: SIGINT to
the job's tasks, as Ctrl-C (a training run saves ``last.pth`` and stops), each pid first checked to be a
submitit process of the run.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from ...errors import ConfigError
from ...fileio import machine_memory_gb, usable_cores
from .base import Backend, JobState, signal_text


def parallelism(lc) -> int:
    """Runs at once: ``launcher.array_parallelism``, else usable cores / ``cpus_per_task``."""
    if lc.array_parallelism:
        return lc.array_parallelism
    cores = usable_cores()
    return max(1, cores // (lc.cpus_per_task or cores))


def _pid(event: Mapping[str, Any]) -> int | None:
    """The job's pid as jobs.jsonl (a user file) records it, if it is one."""
    try:
        pid = int(event.get("pid") or 0)
    except (TypeError, ValueError):
        return None
    return pid if pid > 1 else None


def _role(pid: int | None, sweep, run_id: str) -> str | None:
    """``"task"`` or ``"controller"`` when ``pid`` is a live submitit process of this run's local job (its
    command line runs submitit and names the run's job folder in this sweep's logs), else None. A pid read
    from a user file (jobs.jsonl, claim.json) is signalled only then."""
    from ..job import pid_alive

    if pid is None or pid in (os.getpid(), os.getpgrp()) or not pid_alive(pid):
        return None
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace") + " "
    except OSError:  # no /proc, or it ended: nothing verified, nothing signalled
        return None
    folders = {str(base / name) for base in (sweep.logs.absolute(), sweep.logs.resolve()) for name in (run_id, "%j")}
    if not any(f + end in cmd for f in folders for end in (" ", "'", '"')):
        return None
    if "-m submitit.core._submit " in cmd and not cmd.startswith(("/bin/sh ", "sh ")):
        return "task"
    from .local_controller import CONTROLLER_MODULE

    if any(f"-m {m} " in cmd for m in ("submitit.local._local", CONTROLLER_MODULE)) \
            and not cmd.startswith(("/bin/sh ", "sh ")):
        return "controller"
    return None  # e.g. the shell of launcher.setup: its controller is among its children


def _descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, ... (from /proc; none where there is no /proc)."""
    kids: dict[int, list[int]] = {}
    try:
        entries = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for d in entries:
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def longest_first(spec, runs: list) -> list:
    """``runs`` with the costliest first (the task's estimate of training MACs; ties keep the spec's order):
    with a few slots, starting the long runs early keeps one long run from finishing alone at the end."""
    from .. import estimate

    try:
        cost = {row["run_id"]: row.get("train_pmacs") or 0.0 for row in estimate(spec, runs)}
    except Exception:  # noqa: BLE001 - an estimate is a hint for the order, never a reason not to run
        return list(runs)
    return sorted(runs, key=lambda r: -cost.get(r.run_id, 0.0))


REQUEUE_CODE = 144  # submitit.local.local.LOCAL_REQUEUE_RETURN_CODE: a task asks its controller to restart it


def exit_record(sweep, run_id: str, job: Mapping[str, Any]) -> dict[str, Any] | None:
    """The exit record the job's controller left (:mod:`.local_controller`), if it is this job's: its id
    (from jobs.jsonl, a user file) a pid, the record written after the job was submitted."""
    import json

    job_id = str(job.get("job_id"))
    if not job_id.isdigit():
        return None
    from .local_controller import exit_record_path

    try:
        rec = json.loads(exit_record_path(sweep.logs / run_id, job_id).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(rec, dict) or str(rec.get("job_id")) != job_id or not isinstance(rec.get("codes"), list):
        return None
    t, since = rec.get("time"), job.get("time")
    if isinstance(t, (int, float)) and isinstance(since, (int, float)) and t < since - 60:
        return None  # a reused pid's old record
    return rec


class LocalBackend(Backend):
    name = "local"
    description = ("processes on this machine, launcher.array_parallelism at a time (default cores / "
                   "cpus_per_task), followed to the end")
    auto_rank = 10
    submitit_cluster = "local"

    def check(self, launcher, *, allow_setup: bool = False) -> None:
        """One node; cores, memory and GPUs of this machine."""
        super().check(launcher, allow_setup=allow_setup)
        lc = launcher
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

    def executor_parameters(self, lc) -> dict[str, Any]:
        return {"local_setup": list(lc.setup)} if lc.setup else {}

    def executor(self, spec, folder, **options) -> Any:
        """submitit's local executor, its jobs run by our controller (:mod:`.local_controller`: the same,
        plus an exit record saying how the job's tasks ended)."""
        from submitit.local.local import LocalExecutor as Theirs

        from .local_controller import LocalExecutor

        ex = super().executor(spec, folder, **options)
        if type(ex._executor) is Theirs:  # not a subclass's other executor (debug: in-process)
            ex._executor.__class__ = LocalExecutor  # a subclass adding no state: the one method differs
        return ex

    def event_fields(self, job: Any) -> dict[str, Any]:
        return {"pid": int(job.job_id)}  # a local job's id is its controller's pid

    def announce(self, spec, sweep_dir, n_runs):
        return (f"sweep {spec.name}: {n_runs} runs, local processes, {parallelism(spec.launcher)} at a time "
                f"(logs in {sweep_dir}/logs; Ctrl-C stops them with a checkpoint, the same command continues)")

    def submit(self, submission, runs, progress=None) -> list[Any]:
        """At most :func:`parallelism` runs at a time, the costliest first; returns when all ended. Each run's job files lie in
        ``logs/RUN_ID/`` (submitit's local controller creates its folder argument as given, so a ``%j``
        template there would leave an empty directory named ``%j``)."""
        parallel = parallelism(submission.spec.launcher)
        pending = longest_first(submission.spec, runs)
        active: list[Any] = []
        finished: list[Any] = []
        try:
            while pending or active:
                while pending and len(active) < parallel:
                    r = pending.pop(0)
                    ex = self.executor(submission.spec, submission.sweep.logs / r.run_id)
                    active.extend(submission.send(ex, [r]))
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

    def states(self, sweep, jobs, results) -> dict[str, JobState]:
        return {rid: self._state(rid, ev, sweep, results.get(rid)) for rid, ev in jobs.items()}

    def _job_running(self, event: Mapping[str, Any]) -> bool:
        """Whether the job's own process (not the task's) still lives."""
        from ..job import pid_alive

        pid = _pid(event)
        return pid is not None and pid_alive(pid)

    def _state(self, run_id: str, job: Mapping[str, Any], sweep, result: dict | None) -> JobState:
        from ..job import cancelled_job, holder_alive, read_claim
        from ..status import submitit_error

        rd = sweep.run_dir(run_id)
        claim = read_claim(rd)
        if claim and holder_alive(claim):
            return JobState("running")
        if self._job_running(job):
            return JobState("queued" if not claim else "running")
        if cancelled_job(rd) == str(job["job_id"]):
            return JobState("cancelled", f"job {job['job_id']} cancelled (focalexp cancel)")
        err = submitit_error(job, sweep)
        if err:
            return JobState("failed", err)
        rstat = (result or {}).get("status")
        if rstat in ("interrupted", "stopped"):  # the task itself stopped early, with a checkpoint
            return JobState("stopped", (result or {}).get("reason", "")
                            or "stopped before the end; a re-run continues it")
        return self._ending(job, sweep, run_id)

    def _ending(self, job: Mapping[str, Any], sweep, run_id: str) -> JobState:
        """How a job that left neither a result nor an exception ended, from its controller's exit record
        (:mod:`.local_controller`); none: the controller died too (the launcher's whole process group was
        killed, or the machine went down), which says nothing against the run."""
        job_id = str(job["job_id"])
        rec = exit_record(sweep, run_id, job)
        if rec is None:
            return JobState("killed", f"job {job_id}: the job's processes ended without a result (killed?)",
                            charged=False)
        codes = [c for c in rec["codes"] if isinstance(c, int)]
        if REQUEUE_CODE in codes:  # a record of a wait before the job requeued itself: not how it ended
            return JobState("killed", f"job {job_id}: the job's processes ended without a result (killed?)",
                            charged=False)
        if rec.get("timed_out") is True:
            return JobState("timeout", f"job {job_id} ran past launcher.timeout_min")
        signals = sorted({-c for c in codes if c < 0})
        if signals:
            oom = signals == [9] and isinstance(rec.get("oom_kills"), int) and rec["oom_kills"] > 0
            how = "out of memory (the kernel's OOM killer: signal 9)" if oom else signal_text(signals[0])
            return JobState("killed", f"{how} (job {job_id}'s task)", oom=oom)
        bad = [c for c in codes if c > 0]
        if bad:
            return JobState("failed", f"job {job_id}'s task exited with code {bad[0]} and no result")
        return JobState("killed", f"job {job_id} ended without a result", charged=False)

    def cancel(self, sweep, jobs) -> list[str]:
        """SIGINT to each job's tasks, as Ctrl-C would: a training run saves last.pth at its next step and
        stops, any other task stops at once (SIGTERM would not do: submitit's job ignores it until the task
        installs its own handler). The tasks are found in the job's process tree and the run's claim; a job
        with no task yet gets SIGINT at its controller, which then starts none. Never a process group (a
        local job shares the launcher's), and every pid is first checked to be this run's."""
        from ..job import read_claim

        here = socket.gethostname()
        told = []
        for rid, ev in jobs.items():
            pids = [_pid(ev)]
            if pids[0] is not None:
                pids += _descendants(pids[0])
            claim = read_claim(sweep.run_dir(rid))
            if claim and str(claim.get("job_id")) == str(ev["job_id"]) and claim.get("host") == here:
                pids.append(_pid(claim))
            roles = {p: _role(p, sweep, rid) for p in dict.fromkeys(pids)}
            tasks = [p for p, r in roles.items() if r == "task"]
            targets = tasks or [p for p, r in roles.items() if r == "controller"]
            hit = False
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGINT)
                    hit = True
                except OSError:
                    pass
            if hit:
                told.append(rid)
        return told
