"""SLURM through submitit: job arrays (split at the cluster's MaxArraySize), submitted and left to the
scheduler; the launcher returns at once.

State: ``sacct`` once for every job of the sweep (a task's own record over its array's); where accounting is
off or a job is too fresh for it, ``squeue`` fills in. A job that neither knows and that left no result is
reported as killed, never waited on. A task that raised is failed; OUT_OF_MEMORY, NODE_FAIL and a signal
in the exit code are killed, TIMEOUT and DEADLINE timeout. Cancel: one ``scancel`` for every job.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from ...errors import ConfigError, FocalexpError, did_you_mean
from .base import Backend, JobState, signal_text

DEFAULT_MAX_ARRAY = 1001

_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING", "STAGE_OUT"}
_REQUEUED = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PREEMPTED", "RESV_DEL_HOLD"}
LAGGING = "left the queue; sacct has not recorded how it ended yet"
_LIVE = {"PENDING", *_RUNNING, *_REQUEUED}  # not final: squeue's live word beats sacct's
_ENDED_BADLY = {"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"}
_JOB_ID = re.compile(r"^\d+(_\d+)?$")  # what scancel is given: a job or an array task, nothing else


def _run(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def expand_ids(token: str) -> list[str]:
    """``12_[3-5,7%2]`` -> 12_3, 12_4, 12_5, 12_7 (submitit's parser of SLURM's job ids); others unchanged."""
    from submitit.slurm.slurm import read_job_id

    try:
        parts = read_job_id(token)
    except ValueError:  # "12_x": not an array task submitit knows; keep it as it is
        return [token]
    out: list[str] = []
    for p in parts:
        if len(p) == 1:
            out.append(p[0])
        elif len(p) == 2:
            out.append(f"{p[0]}_{p[1]}")
        else:
            out.extend(f"{p[0]}_{i}" for i in range(int(p[1]), int(p[2]) + 1))
    return out


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """``sacct -X -P -n --format JobID,State,ExitCode,Reason`` -> job id -> (STATE, "exit CODE[, reason]").

    A task's own record wins over an array record that expands to it: while an array runs, sacct returns
    both ``9_3|RUNNING`` and the not-yet-updated ``9_[3-4%5]|PENDING`` of the tasks still waiting, and the
    task that already started is running, not pending (nor requeued). Among records equally specific, the
    later line wins."""
    states: dict[str, tuple[str, str]] = {}
    own: set[str] = set()  # ids set by a record of their own
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 4 or not parts[1].strip():
            continue
        jid, state, code, reason = (p.strip() for p in parts[:4])
        state = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
        value = (state, f"exit {code}" + (f", {reason}" if reason and reason != "None" else ""))
        ids = expand_ids(jid)
        if ids == [jid]:
            states[jid] = value
            own.add(jid)
        else:
            for j in ids:
                if j not in own:
                    states[j] = value
    return states


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """job id -> (STATE, reason or exit code), the freshest word on each: sacct (:func:`parse_sacct`) for
    jobs that ended, squeue (the controller's live view) for those it still lists whose accounting record
    is missing or not final (slurmdbd lags: a task that started, or even ended, can be only in the array's
    PENDING record for seconds; one that left the queue is reported ending). None when neither command
    answers (no SLURM client here, controller down)."""
    if not job_ids:
        return {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    out = _run(["sacct", "-X", "-P", "-n", "-j", ",".join(bases), "--format", "JobID,State,ExitCode,Reason"])
    states = parse_sacct(out or "")
    live = [j for j in job_ids if j not in states or states[j][0] in _LIVE]
    if live:
        sq = queue_states()
        if out is None and sq is None:
            return None
        queued = set(sq or ())
        for j, word in (sq or {}).items():
            if j not in states or states[j][0] in _LIVE:
                states[j] = word
        if sq is not None:  # not final in sacct, gone from the queue: it ended, its accounting lags behind
            for j in live:
                if j in states and j not in queued and states[j][0] in _LIVE:
                    states[j] = ("COMPLETING", LAGGING)
    return states


def queue_states() -> dict[str, tuple[str, str]] | None:
    """job id -> (STATE, reason) of every job ``squeue`` lists (pending, running, completing): the controller's
    live word, fresher than ``sacct``'s (None when squeue does not answer)."""
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r"])
    if out is None:
        return None
    states: dict[str, tuple[str, str]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            for j in expand_ids(parts[0]):
                states[j] = (parts[1], parts[2])
    return states


# what slurmstepd and srun write to the job's stderr when a step is killed for memory: the cgroup's oom killer
# (task/cgroup) or the RSS sampling of JobAcctGatherParams=OverMemoryKill
_OOM_LOG = re.compile(r"^(slurmstepd\S*: error: .*(oom-kill event|exceeded (job )?memory limit)"
                      r"|srun: error: .*task \d+: Out Of Memory)", re.M)


def memory_kills(failed: Mapping[str, str | None]) -> set[str]:
    """Which of the ``failed`` jobs (job id -> its stderr log, or None) were killed for memory. submitit runs
    the task in an srun step, so ``sacct -X`` reads such a job FAILED and only the step says OUT_OF_MEMORY:
    one ``sacct`` of the steps; a job it does not settle (accounting off, or a step killed by RSS sampling,
    which sacct records as CANCELLED) by slurmstepd's line in the log (its last 16 KiB)."""
    if not failed:
        return set()
    bases = sorted({j.split("_")[0] for j in failed})
    out = _run(["sacct", "-P", "-n", "-j", ",".join(bases), "--format", "JobID,State"]) or ""
    killed: set[str] = set()
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if "." in jid and state.startswith("OUT_OF_MEMORY"):
            killed.update(j for j in expand_ids(jid.split(".")[0]) if j in failed)
    for jid, log in failed.items():
        if jid in killed or not log:
            continue
        try:
            with open(log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 16 * 1024))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if _OOM_LOG.search(tail):
            killed.add(jid)
    return killed


def step_signal(job_id: str) -> int | None:
    """The signal that killed a step of the job (sacct without -X: ``107.0|CANCELLED|0:9``), None if none.
    A task that srun ran and SIGKILL ended shows in the job's own record only as ``FAILED 9:0``."""
    if not _JOB_ID.match(job_id):
        return None
    for line in (_run(["sacct", "-P", "-n", "-j", job_id, "--format", "JobID,ExitCode"]) or "").splitlines():
        jid, _, code = line.partition("|")
        m = re.fullmatch(r"\d+:(\d+)", code.strip())
        if jid.startswith(job_id + ".") and m and int(m.group(1)):
            return int(m.group(1))
    return None


def exit_signal(why: str) -> int | None:
    """The signal in sacct's ExitCode ("exit 0:9" -> 9; "exit 137:0", a shell's 128 + 9, -> 9), or None."""
    m = re.match(r"exit (\d+):(\d+)", why)
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2))
    if sig:
        return sig
    return code - 128 if 128 < code < 160 else None


def _sinfo_nodes() -> list[dict[str, Any]] | None:
    """Partitions and node sizes as SLURM reports them (None when sinfo cannot answer)."""
    out = _run(["sinfo", "-h", "-N", "-o", "%N|%P|%m|%c"])
    if out is None:
        return None
    nodes = []
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        try:
            nodes.append({"node": parts[0], "partition": parts[1].rstrip("*"), "mem_gb": int(parts[2]) / 1024,
                          "cpus": int(parts[3])})
        except ValueError:
            continue
    return nodes or None


@functools.lru_cache(maxsize=1)
def _installed_in_interpreter() -> bool:
    """Whether this interpreter imports focalexp outside this checkout's directory (asked once per process:
    ``preflight`` and ``launch`` both need it)."""
    probe = subprocess.run([sys.executable, "-c", "import focalexp, sys; print(focalexp.__file__)"],
                           capture_output=True, text=True, cwd="/", timeout=60)
    return probe.returncode == 0


def max_array_size(lc) -> int:
    """Runs per job array: ``launcher.max_array_size``, else the cluster's MaxArraySize, else 1001."""
    if lc.max_array_size:
        return lc.max_array_size
    for line in (_run(["scontrol", "show", "config"]) or "").splitlines():
        if line.strip().startswith("MaxArraySize"):
            try:
                return int(line.split("=")[1])
            except (IndexError, ValueError):
                break
    return DEFAULT_MAX_ARRAY


class SlurmBackend(Backend):
    name = "slurm"
    description = "SLURM job arrays through sbatch (split at MaxArraySize), returning at once (see `focalexp status`)"
    auto_rank = 20
    returns_at_once = True
    requires = "srun is on PATH"
    unavailable = "srun is not on PATH here (no SLURM client)"
    submitit_cluster = "slurm"

    def available(self) -> bool:
        return shutil.which("srun") is not None

    def check(self, launcher, *, allow_setup: bool = False) -> None:
        """The partition, memory, CPUs and nodes asked for against what ``sinfo`` reports (nothing is
        refused when sinfo does not answer), and focalexp installed for the nodes' interpreter."""
        super().check(launcher, allow_setup=allow_setup)
        lc = launcher
        nodes = _sinfo_nodes()
        if nodes is not None:
            parts = sorted({n["partition"] for n in nodes})
            if lc.partition is not None:
                if lc.partition not in parts:
                    raise ConfigError(f"launcher.partition: '{lc.partition}' is not a partition of this cluster"
                                      f"{did_you_mean(lc.partition, parts)}; partitions: {', '.join(parts)}")
                nodes = [n for n in nodes if n["partition"] == lc.partition]
            where = f"partition '{lc.partition}'" if lc.partition else "this cluster"
            mem = max(n["mem_gb"] for n in nodes)
            if lc.mem_gb is not None and mem > 0 and lc.mem_gb > mem:
                raise ConfigError(f"launcher.mem_gb: {lc.mem_gb:g} GB but the largest node of {where} has "
                                  f"{mem:.1f} GB")
            cpus = max(n["cpus"] for n in nodes)
            if lc.cpus_per_task and lc.cpus_per_task * lc.tasks_per_node > cpus:
                raise ConfigError(f"launcher.cpus_per_task: {lc.cpus_per_task} x {lc.tasks_per_node} task(s) but "
                                  f"the largest node of {where} has {cpus} CPUs")
            count = len({n["node"] for n in nodes})
            if lc.nodes > count:
                raise ConfigError(f"launcher.nodes: {lc.nodes} but {where} has {count} node(s)")
        # jobs unpickle focalexp on the node with this interpreter: it must be installed, not just on sys.path
        if not _installed_in_interpreter():
            here = Path(__file__).resolve().parents[3]
            raise FocalexpError(f"focalexp is not installed in {sys.executable} (jobs import it on the nodes); "
                                f"run `pip install -e {here}`")

    def executor_parameters(self, lc) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if lc.mem_gb is not None:
            params["mem_gb"] = lc.mem_gb
        for k in ("partition", "account", "qos", "constraint"):
            if getattr(lc, k):
                params[f"slurm_{k}"] = getattr(lc, k)
        params["slurm_signal_delay_s"] = lc.signal_delay_s
        params["slurm_array_parallelism"] = lc.array_parallelism or 256
        if lc.setup:
            params["slurm_setup"] = list(lc.setup)
        return params

    def submitted(self, job_ids, sweep_dir):
        if not job_ids:
            return None
        arrays = sorted({j.split("_")[0] for j in job_ids})  # array tasks are ARRAY_INDEX
        return (f"SLURM job(s) {', '.join(arrays)}; follow with `focalexp status {sweep_dir}`; when they end, "
                f"`focalexp report {sweep_dir}` writes the tables and figures (or pass --wait)")

    def submit(self, submission, runs, progress=None) -> list[Any]:
        """Job arrays of at most MaxArraySize runs; returns once sbatch accepted them."""
        spec = submission.spec
        ex = self.executor(spec, submission.sweep.logs / "%j", slurm_max_num_timeout=spec.launcher.max_num_timeout)
        jobs: list[Any] = []
        chunk = max_array_size(spec.launcher)
        for i in range(0, len(runs), chunk):
            jobs.extend(submission.send(ex, runs[i:i + chunk], array=True))
        return jobs

    def states(self, sweep, jobs, results) -> dict[str, JobState]:
        sched = slurm_states([str(e["job_id"]) for e in jobs.values()])
        if sched is None:
            why = "the SLURM controller does not answer (sacct and squeue failed)"
            return {rid: JobState("unknown", why) for rid in jobs}
        self._settle(sweep, jobs, results, sched)
        return {rid: self._state(rid, ev, sched.get(str(ev["job_id"])), sweep, results.get(rid))
                for rid, ev in jobs.items()}

    @staticmethod
    def _settle(sweep, jobs, results, sched: dict[str, tuple[str, str]]) -> None:
        """Corrects ``sched`` (sacct's word first) for the runs without a final result. A job that sacct says
        ended and that ``squeue`` lists as pending or running takes squeue's state: for about a second after
        its node fails, sacct reads a job NODE_FAIL that the controller has already requeued. A job that ended
        FAILED, or that the scheduler does not know (or not yet how it ended), and that was killed for memory
        (:func:`memory_kills`) reads OUT_OF_MEMORY."""
        from ..status import in_sweep

        open_runs = {rid: str(ev["job_id"]) for rid, ev in jobs.items()
                     if (results.get(rid) or {}).get("status") not in ("done", "failed")}
        back = _REQUEUED | {"PENDING", "RUNNING"}  # not COMPLETING: a job that ends is sacct's to describe
        if any(j in sched and sched[j][0] not in back | _RUNNING for j in open_runs.values()):
            live = queue_states() or {}
            sched.update({j: live[j] for j in open_runs.values() if j in live and live[j][0] in back})
        failed = {}
        for rid, jid in open_runs.items():
            ev = jobs[rid]
            if jid not in sched or sched[jid][0] == "FAILED" or sched[jid] == ("COMPLETING", LAGGING):
                log = in_sweep(sweep, ev.get("stderr"))
                failed[jid] = str(log) if log else None
        for jid in memory_kills(failed):
            why = sched[jid][1] if jid in sched else "no accounting record; slurmstepd's line in the job log"
            sched[jid] = ("OUT_OF_MEMORY", why)

    def _state(self, run_id: str, job: Mapping[str, Any], sched: tuple[str, str] | None, sweep,
               result: dict | None) -> JobState:
        from ..job import cancelled_job, holder_alive, read_claim
        from ..status import submitit_error

        job_id = str(job["job_id"])
        rstat = (result or {}).get("status")
        if sched is None or sched == ("COMPLETING", LAGGING):  # nothing, or nothing final, about its end
            claim = read_claim(sweep.run_dir(run_id))
            if claim and holder_alive(claim):
                return JobState("running")
            if cancelled_job(sweep.run_dir(run_id)) == job_id:  # accounting off: the run dir knows
                return JobState("cancelled", f"job {job_id} cancelled (focalexp cancel)")
            err = submitit_error(job, sweep)
            if err:
                return JobState("failed", err)
            if rstat in ("stopped", "interrupted"):  # the task stopped itself, with a checkpoint
                return JobState("stopped", (result or {}).get("reason", "") or f"job {job_id} stopped early")
            return JobState("killed", f"job {job_id} is gone without a result and the scheduler has no "
                                      + ("record of how it ended yet" if sched else "record of it"),
                            None if sched is None else sched[0], charged=False)
        state, why = sched
        if state == "PENDING":
            return JobState("requeued" if rstat in ("running", "interrupted") else "queued", "", state)
        if state in _REQUEUED:
            return JobState("requeued", "", state)
        if state in _RUNNING:
            return JobState("running", "", state)
        if state.startswith("CANCELLED"):
            return JobState("cancelled", f"job {job_id} cancelled ({why})", state)
        err = submitit_error(job, sweep) if state in _ENDED_BADLY else None
        more = f": {err}" if err else ""
        # the scheduler's word first: a task that raised because a worker was OOM-killed was killed for memory
        if state == "OUT_OF_MEMORY":
            return JobState("killed", f"out of memory (job {job_id}, {why}){more}", state, oom=True)
        if state in ("NODE_FAIL", "BOOT_FAIL"):
            return JobState("killed", f"node failure (job {job_id}, {state}, {why}){more}", state)
        if state in ("TIMEOUT", "DEADLINE"):
            return JobState("timeout", f"job {job_id} reached its time limit ({state}, {why}){more}", state)
        if err:  # the task raised: failed, with its exception
            return JobState("failed", f"{state} ({why}){more}", state)
        if state == "FAILED":  # no exception: a signal in its exit code or in one of its steps' is a kill
            sig = exit_signal(why) or step_signal(job_id)
            if sig is not None:
                return JobState("killed", f"{signal_text(sig)} (job {job_id}, {why})", state)
            if why.startswith("exit 0:0"):  # sacct has not recorded the exit yet (it does within seconds)
                return JobState("killed", f"job {job_id} ended with neither exit code nor exception yet (killed?)",
                                state, charged=False)
        if state in _ENDED_BADLY:
            return JobState("failed", f"{state} ({why})", state)
        if state == "COMPLETED":
            claim = read_claim(sweep.run_dir(run_id))
            if claim and claim.get("job_id") != job_id and holder_alive(claim):
                return JobState("running", "", state)  # this job was a duplicate; the holder is still at it
            return JobState("stopped" if rstat in ("stopped", "interrupted") else "failed",
                            (result or {}).get("reason", "") or f"job {job_id} completed without writing a result",
                            state)
        return JobState("failed", f"scheduler state {state} ({why})", state)

    def job_alive(self, job_id: str) -> bool | None:
        """True/False from squeue; None when squeue cannot tell (no SLURM here)."""
        try:
            out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return False if "Invalid job id" in out.stderr else None
        return bool(out.stdout.strip())

    def cancel(self, sweep, jobs) -> list[str]:
        """One ``scancel`` for every job (ids from jobs.jsonl, a user file: only plain job ids are passed)."""
        ids = {rid: str(e["job_id"]) for rid, e in jobs.items() if _JOB_ID.match(str(e["job_id"]))}
        if not ids:
            return []
        try:
            p = subprocess.run(["scancel", *sorted(set(ids.values()))], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FocalexpError(f"scancel failed: {e}") from None
        if p.returncode != 0 and not p.stderr.strip():
            raise FocalexpError(f"scancel failed (exit {p.returncode})")
        # scancel goes on past a job that already ended (and says so on stderr); the others are cancelled
        ended = {j for j in ids.values() if re.search(rf"\b{re.escape(j)}\b", p.stderr)}
        return [rid for rid, j in ids.items() if j not in ended]
