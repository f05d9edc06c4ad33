"""Submit a sweep's runs through its backend (:mod:`focalexp.sweep.backends`), and cancel them.

What every backend shares lives here: the plan (what to (re)submit), the sweep lock, retries (a failed
run's ``result.json`` moved aside) and the ``jobs.jsonl`` records, a "submitting" line before each
submission and a "submitted" line (job id, log paths) after it (:meth:`Submission.send`), what the jobs'
``provenance.json`` learns of the submission, and the code snapshot they run from (``launcher.snapshot``,
:mod:`focalexp.sweep.snapshot`).

Re-running is safe and idempotent: runs that are done are skipped, queued/running ones are left
alone, missing and stopped ones are (re)submitted, killed and timed-out ones too (at most
``launcher.max_retries`` times in a row; a run killed twice for out of memory is held), failed and
cancelled ones only with ``retry_failed``. Each submission's "submitted" line records its attempt number
and the ending it follows (:class:`Plan`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, did_you_mean
from .. import provenance
from .backends import Backend, find_backend, get_backend
from .job import RunJob, request_cancel
from .spec import LauncherConfig, Run, SweepSpec
from .status import DEFAULT_MAX_RETRIES, RETRIED, RunState, retry_hold, run_states
from .store import SweepDir

ACTIVE = ("queued", "running", "requeued")  # states whose job a cancel stops


def check_launcher(lc: LauncherConfig, cluster: str, *, allow_setup: bool = False) -> None:
    """Refuse, before anything is written or submitted, a request that no machine of ``cluster`` can meet,
    and shell lines (``launcher.setup``) that a spec file would run unless the caller allows them."""
    get_backend(cluster).check(lc, allow_setup=allow_setup)


def task_settings(spec: SweepSpec) -> dict[str, Any]:
    from ..tasks import get_task

    return get_task(spec.task).settings(spec.launcher, spec.task_options)


@dataclass
class Plan:
    submit: list[Run]
    skip: dict[str, list[str]]  # state -> run ids left alone
    # run id -> what its next "submitted" line records: attempt number, the ending before it ("after"), and
    # whether that ending counts toward launcher.max_retries; "forced": --retry-failed (the count restarts)
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)


def plan(runs: list[Run], states: dict[str, RunState], retry_failed: bool,
         max_retries: int = DEFAULT_MAX_RETRIES) -> Plan:
    """What a launch (re)submits: missing and stopped runs; killed and timed-out ones unless
    :func:`~focalexp.sweep.status.retry_hold` holds them (``max_retries`` in a row, or out of memory twice);
    with ``retry_failed`` also failed, cancelled and held ones. Done, queued and running runs are left alone."""
    submit, skip, attempts = [], {}, {}
    for r in runs:
        st = states.get(r.run_id)
        state = st.state if st else "missing"
        forced = retry_failed and state in ("failed", "cancelled", *RETRIED)
        again = forced or state in ("missing", "stopped") or (
            state in RETRIED and st is not None and retry_hold(st, max_retries) is None)
        if again:
            submit.append(r)
            attempts[r.run_id] = {"attempt": (st.attempts if st else 0) + 1,
                                  "after": state if st and st.attempts else None}
            if st and st.attempts:
                attempts[r.run_id].update(charged=st.charged, oom=st.oom, forced=forced)
        else:
            skip.setdefault(state, []).append(r.run_id)
    return Plan(submit, skip, attempts)


class Submission:
    """One launch's submissions, made the same way whatever the backend: a backend's ``submit`` hands
    each group of runs to :meth:`send` with its executor."""

    def __init__(self, spec: SweepSpec, sweep: SweepDir, backend: Backend,
                 attempts: dict[str, dict[str, Any]] | None = None) -> None:
        self.spec, self.sweep, self.backend = spec, sweep, backend
        self.attempts = attempts or {}  # run id -> its attempt's fields in jobs.jsonl (Plan.attempts)
        self.settings = task_settings(spec)
        self.code = None  # the code snapshot the jobs run from (launcher.snapshot), made at the first send
        # what the jobs' provenance.json says of the submission; the working directory's git state as it is now
        self.origin = provenance.origin()

    def call(self, run: Run) -> tuple:
        """What the job calls on the node: ``RunJob()(*call)``."""
        return (run.task, run.config, str(self.sweep.run_dir(run.run_id).resolve()), self.settings, self.origin)

    def snapshot(self) -> Path | None:
        """The code snapshot of this submission (made once, at the first call) when the spec asks for one."""
        if self.spec.launcher.snapshot and self.code is None:
            from .snapshot import make_snapshot

            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            dest = self.sweep.path.resolve() / "snapshots" / f"{stamp}-{os.getpid()}"
            self.code = make_snapshot(dest)
            self.origin["snapshot"] = str(self.code)
        return self.code

    def send(self, executor: Any, runs: list[Run], *, array: bool = False) -> list[Any]:
        """Submit ``runs`` through a submitit ``executor`` (``array``: as one job array, submitit's
        ``batch``), recording a "submitting" line per run before and a "submitted" line after."""
        import submitit

        from .snapshot import running_from

        name = self.backend.name
        code = self.snapshot()
        for r in runs:
            self.sweep.record(event="submitting", run_id=r.run_id, cluster=name, **self.attempts.get(r.run_id, {}))
        # sbatch hands the caller's environment to the job, and a local job inherits it: SLURM_* of an
        # enclosing job would leak in (a sweep launched from inside a job stays where it was sent)
        with submitit.helpers.clean_env(), running_from(code):
            if array:
                with executor.batch():
                    jobs = [executor.submit(RunJob(), *self.call(r)) for r in runs]
            else:
                jobs = [executor.submit(RunJob(), *self.call(r)) for r in runs]
        for r, j in zip(runs, jobs):
            self.sweep.record(**self._event(j, r))
        return jobs

    def _event(self, job: Any, run: Run) -> dict[str, Any]:
        ev = {"event": "submitted", "run_id": run.run_id, "job_id": str(job.job_id), "cluster": self.backend.name,
              **self.attempts.get(run.run_id, {})}
        try:
            paths = job.paths
            ev.update(stdout=str(paths.stdout), stderr=str(paths.stderr), result_pickle=str(paths.result_pickle))
        except Exception:  # noqa: BLE001 - a job without files
            pass
        ev.update(self.backend.event_fields(job))
        return ev


def _prepare_retry(sweep: SweepDir, run: Run) -> None:
    """A failed/cancelled run's result.json is moved aside so that its new job is judged afresh."""
    rd = sweep.run_dir(run.run_id)
    res = rd / "result.json"
    if res.exists():
        n = len(list(rd.glob("result.failed*.json")))
        os.replace(res, rd / f"result.failed{n}.json")


def submit_runs(spec: SweepSpec, sweep: SweepDir, runs: list[Run], backend: Backend,
                progress: Callable[[int, int], None] | None = None,
                attempts: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """Submit ``runs`` through ``backend`` (SLURM returns at once; local and debug when the runs ended);
    ``attempts``: what each run's "submitted" line records of its attempt (:attr:`Plan.attempts`)."""
    for r in runs:
        _prepare_retry(sweep, r)
    return backend.submit(Submission(spec, sweep, backend, attempts), runs, progress)


@dataclass
class LaunchOutcome:
    cluster: str
    submitted: list[str] = field(default_factory=list)  # run ids
    skipped: dict[str, list[str]] = field(default_factory=dict)  # state -> run ids
    job_ids: list[str] = field(default_factory=list)


def launch_runs(spec: SweepSpec, sweep: SweepDir, runs: list[Run], backend: Backend, *, retry_failed: bool = False,
                progress: Callable[[int, int], None] | None = None) -> LaunchOutcome:
    """Under the sweep's lock: plan against the current states, write the manifest, submit what needs it."""
    with sweep.lock():
        p = plan(runs, current_states(sweep), retry_failed, spec.launcher.max_retries)
        sweep.write_manifest(spec, runs, backend.name)
        out = LaunchOutcome(backend.name, [r.run_id for r in p.submit], p.skip)
        if p.submit:
            jobs = submit_runs(spec, sweep, p.submit, backend, progress, p.attempts)
            out.job_ids = [str(j.job_id) for j in jobs]
    return out


def current_states(sweep: SweepDir) -> dict[str, RunState]:
    if not sweep.exists():
        return {}
    return {s.run_id: s for s in run_states(sweep)}


@dataclass
class CancelOutcome:
    cancelled: list[str] = field(default_factory=list)  # run ids whose job was told to stop
    skipped: dict[str, list[str]] = field(default_factory=dict)  # state -> run ids left alone
    missed: list[str] = field(default_factory=list)  # queued/running, but no job of theirs could be reached


def cancel_runs(sweep: SweepDir, run_ids: list[str] | None = None) -> CancelOutcome:
    """Stop the queued and running jobs of the sweep (or of ``run_ids``) through their backends, each
    recorded first in its run dir (``cancel.json``, see :mod:`focalexp.sweep.job`). Runs in any other state
    are left alone."""
    states = current_states(sweep)
    if not states:
        sweep.manifest()  # one line saying what the dir is not
    if run_ids is not None:
        for rid in run_ids:
            if rid not in states:
                raise ConfigError(f"--run: '{rid}' is not a run of {sweep.path}{did_you_mean(rid, list(states))}")
    wanted = list(dict.fromkeys(run_ids)) if run_ids is not None else list(states)
    jobs = sweep.latest_jobs()
    out = CancelOutcome()
    by_backend: dict[str, dict[str, dict[str, Any]]] = {}
    for rid in wanted:
        st = states[rid]
        if st.state in ACTIVE and rid in jobs:
            by_backend.setdefault(str(jobs[rid].get("cluster", "local")), {})[rid] = jobs[rid]
        else:
            out.skipped.setdefault(st.state, []).append(rid)
    for name, evs in by_backend.items():
        backend = find_backend(name)
        for rid, ev in evs.items():  # before the signal: a job that has not started its task will not
            request_cancel(sweep.run_dir(rid), str(ev["job_id"]))
        told = backend.cancel(sweep, evs) if backend is not None else []
        out.cancelled.extend(told)
        for rid in evs:
            if rid not in told:
                out.missed.append(rid)
                (sweep.run_dir(rid) / "cancel.json").unlink(missing_ok=True)
    return out
