"""In-process through submitit's debug executor: one run after another in the launcher's own process
(a breakpoint stops there). The machine checks, claims and states are the local backend's."""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import ConfigError
from .local import LocalBackend


class DebugBackend(LocalBackend):
    name = "debug"
    description = "in this process, one run after another (pdb works)"
    auto_rank = None
    submitit_cluster = "debug"

    def check(self, launcher, *, allow_setup: bool = False) -> None:
        super().check(launcher, allow_setup=allow_setup)
        if launcher.snapshot:
            raise ConfigError("launcher.snapshot: the debug backend runs in this process, from the code it has "
                              "imported already; use cluster local or slurm for a snapshot")

    def executor_parameters(self, lc) -> dict[str, Any]:
        return {}  # no shell: launcher.setup lines are not run in-process

    def event_fields(self, job: Any) -> dict[str, Any]:
        return {}

    def announce(self, spec, sweep_dir, n_runs):
        return f"sweep {spec.name}: {n_runs} runs in this process, one after another"

    def submit(self, submission, runs, progress=None) -> list[Any]:
        """Runs each job to its end before the next; a run's failure is in its run dir."""
        ex = self.executor(submission.spec, submission.sweep.logs / "%j")
        jobs = []
        for k, r in enumerate(runs):
            (j,) = submission.send(ex, [r])
            try:
                j.result()
            except Exception:  # noqa: BLE001 - the run dir says how it failed
                pass
            jobs.append(j)
            if progress:
                progress(k + 1, len(runs))
        return jobs

    def _job_running(self, event: Mapping[str, Any]) -> bool:
        return False  # the job was the launcher's process; its claim says whether it still runs

    def cancel(self, sweep, jobs) -> list[str]:
        return []  # nothing runs outside the launcher's process
