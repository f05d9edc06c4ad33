"""The interface every launcher backend implements (see :mod:`focalexp.sweep.backends`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from ...errors import ConfigError

if TYPE_CHECKING:  # the sweep's types, without importing them (backends load before the spec module)
    from ..launcher import Submission
    from ..spec import LauncherConfig, Run, SweepSpec
    from ..store import SweepDir

Progress = Callable[[int, int], None]


@dataclass
class JobState:
    """A backend's verdict on one run whose job is recorded and whose run dir holds no final result:
    ``state`` is one of :data:`focalexp.sweep.status.STATES` (running, queued, requeued, stopped, killed,
    timeout, failed, cancelled, unknown), ``reason`` says why where it is not plain, ``scheduler_state`` is
    the scheduler's own word (SLURM's ``PENDING``, ``FAILED``...) where there is a scheduler.

    ``failed`` is for a task that raised (its exception is the reason); a job that ended with neither a
    result nor an exception is ``killed`` (the signal, or "out of memory" with ``oom`` set, where the
    scheduler or the kernel says so) or ``timeout``. ``charged``: whether this ending counts toward
    ``launcher.max_retries`` (False where nothing says the job itself was at fault, e.g. a local job that
    vanished with its launcher's process group)."""

    state: str
    reason: str = ""
    scheduler_state: str | None = None
    oom: bool = False
    charged: bool = True


class Backend:
    """Where a sweep's runs go. Subclasses set ``name`` (the spec's ``launcher.cluster`` value) and
    ``description`` (one line, shown by ``focalexp sweep --help``) and implement :meth:`submit`,
    :meth:`states` and :meth:`cancel`; :meth:`available` and :meth:`check` have working defaults.

    A backend that uses submitit sets ``submitit_cluster`` and gets :meth:`executor`; the generic parts
    (what to submit, ``jobs.jsonl`` records, retries, the sweep lock) are the launcher's, and a backend
    submits through :meth:`Submission.send <focalexp.sweep.launcher.Submission.send>`, which records them.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # ``auto`` picks the available backend with the highest rank; None: never picked by ``auto``
    auto_rank: ClassVar[int | None] = None
    # what available() needs, for ``--help`` ("srun is on PATH"); empty: always available
    requires: ClassVar[str] = ""
    unavailable: ClassVar[str] = "it cannot submit from here"  # why available() is False, for the error
    submitit_cluster: ClassVar[str | None] = None  # AutoExecutor's ``cluster`` for :meth:`executor`
    # True: submit() returns once the jobs are queued (a scheduler runs them); False: it returns when
    # every run ended, and ``focalexp sweep`` prints the report at once
    returns_at_once: ClassVar[bool] = False

    # -- before anything is written
    def available(self) -> bool:
        """Whether this machine can submit through this backend (e.g. a scheduler client on PATH)."""
        return True

    def check(self, launcher: LauncherConfig, *, allow_setup: bool = False) -> None:
        """Refuse, before anything is written or submitted, a request that no machine of this backend can
        meet (one line naming the ``launcher.`` key). The base refuses ``launcher.setup`` shell lines unless
        the caller allows them; subclasses call ``super().check(...)`` first."""
        if launcher.setup and not allow_setup:
            raise ConfigError(f"launcher.setup: the spec asks to run {len(launcher.setup)} shell line(s) before "
                              f"each job ({launcher.setup[0][:60]!r}); a spec file runs no commands unless you "
                              "pass --allow-setup (Python: launch(..., allow_setup=True))")

    # -- submitting
    def executor_parameters(self, launcher: LauncherConfig) -> dict[str, Any]:
        """This backend's own (prefixed) submitit parameters, beside the generic ones of :meth:`executor`."""
        return {}

    def executor(self, spec: SweepSpec, folder: Path, **options: Any) -> Any:
        """A submitit ``AutoExecutor`` for this backend writing its job files under ``folder`` (``options``:
        AutoExecutor's backend-prefixed constructor arguments), with the spec's resources set."""
        import submitit

        lc = spec.launcher
        ex = submitit.AutoExecutor(folder=str(folder), cluster=self.submitit_cluster, **options)
        params: dict[str, Any] = {"name": f"fx-{spec.name}", "timeout_min": lc.timeout_min, "nodes": lc.nodes,
                                  "tasks_per_node": lc.tasks_per_node}
        if lc.gpus_per_node:
            params["gpus_per_node"] = lc.gpus_per_node
        if lc.cpus_per_task:
            params["cpus_per_task"] = lc.cpus_per_task
        ex.update_parameters(**params, **self.executor_parameters(lc))
        return ex

    def submit(self, submission: Submission, runs: list[Run], progress: Progress | None = None) -> list[Any]:
        """Submit ``runs`` (each through ``submission.send``) and return their jobs (objects with a
        ``job_id``). A backend decides whether this returns at once (a scheduler) or when the runs ended."""
        raise NotImplementedError

    def announce(self, spec: SweepSpec, sweep_dir: Path, n_runs: int) -> str | None:
        """One line for the user before ``n_runs`` runs are submitted (where they run, where the logs go,
        how to stop them), or None for nothing."""
        return None

    def submitted(self, job_ids: list[str], sweep_dir: Path) -> str | None:
        """One line for the user after :meth:`submit` returned with ``job_ids`` queued (a backend that
        ``returns_at_once``): the jobs, how to follow them and how to get the report. None: nothing."""
        return None

    def event_fields(self, job: Any) -> dict[str, Any]:
        """What this backend records in the job's ``submitted`` line of ``jobs.jsonl`` beside the generic
        fields (job id, log paths)."""
        return {}

    # -- following and stopping
    def states(self, sweep: SweepDir, jobs: Mapping[str, dict[str, Any]],
               results: Mapping[str, dict[str, Any] | None]) -> dict[str, JobState]:
        """The state of every run in ``jobs`` (run id -> its latest ``submitted`` event from ``jobs.jsonl``,
        a user file: check what you read), with one batched question to the scheduler for all of them;
        never waits on a job. ``results``: run id -> its run dir's ``result.json`` (None if none); those
        given here are neither done nor failed."""
        raise NotImplementedError

    def job_alive(self, job_id: str) -> bool | None:
        """Whether the job that holds a run's claim still lives, from the scheduler; None when this backend
        cannot tell (the claim's host and pid then decide)."""
        return None

    def cancel(self, sweep: SweepDir, jobs: Mapping[str, dict[str, Any]]) -> list[str]:
        """Stop the jobs of ``jobs`` (run id -> its latest ``submitted`` event; runs still queued or
        running); returns the run ids whose job was told to stop."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<backend {self.name!r}: {type(self).__module__}.{type(self).__qualname__}>"


def signal_text(signum: int) -> str:
    """``9`` -> "signal 9 (SIGKILL)"."""
    import signal

    try:
        return f"signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"signal {signum}"
