"""A local job's controller: submitit's, plus an exit record of how its tasks ended.

submitit's local controller starts the job's task processes, waits for them, requeues them on a time-out
and exits 0 whatever became of them: once it is gone nothing says whether a task exited or was killed.
This one writes ``LOGS/RUN_ID/JOBID_exit.json`` (atomically) each time its tasks ended: their exit codes
(a negative code is the signal that killed the task), whether the job's time ran out, and whether the
kernel's OOM killer struck this cgroup meanwhile (``memory.events``, cgroup v2; nothing is guessed where
it cannot be read). A job whose controller was killed too (its launcher's whole process group) leaves no
record: :class:`~focalexp.sweep.backends.local.LocalBackend` reads that as killed, from outside.

Started by :class:`LocalExecutor` as ``python -m focalexp.sweep.backends.local_controller FOLDER``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from submitit.local import local as _local


CONTROLLER_MODULE = "focalexp.sweep.backends.local_controller"


def exit_record_path(folder: Path, job_id: str) -> Path:
    return Path(folder) / f"{job_id}_exit.json"


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's memory cgroup (cgroup v2:
    ``memory.events``; v1: ``memory.oom_control``); None where it cannot be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    places = []
    for line in lines:
        _, ctrl, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.lstrip("/")
        if ctrl == "":
            places.append(Path("/sys/fs/cgroup") / rel / "memory.events")
        elif "memory" in ctrl.split(","):
            # a cgroup namespace shows the process's own cgroup as the root of the hierarchy
            places += [Path("/sys/fs/cgroup/memory") / rel / "memory.oom_control",
                       Path("/sys/fs/cgroup/memory/memory.oom_control")]
    for place in places:
        try:
            for line in place.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


class Controller(_local.Controller):
    """submitit's controller, writing the exit record after every wait for its tasks."""

    _oom_before: int | None = None

    def start_tasks(self) -> None:
        self._oom_before = oom_kills()
        super().start_tasks()

    def wait(self, freq: int = 24) -> Sequence[int | None]:
        codes = super().wait(freq)
        after = oom_kills()
        record: dict[str, Any] = {"job_id": self.pid, "codes": list(codes), "time": time.time(),
                                  "timed_out": any(c is None for c in codes),
                                  "oom_kills": None if after is None or self._oom_before is None
                                  else after - self._oom_before}
        path = exit_record_path(self.folder, self.pid)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, path)
        except OSError:  # a full disk: the job is then judged as one that left no record
            tmp.unlink(missing_ok=True)
        return codes


class LocalExecutor(_local.LocalExecutor):
    """submitit's LocalExecutor, whose jobs run under :class:`Controller` instead of submitit's own
    controller; the job is submitit's ``LocalJob`` (its id is the controller's pid, as before)."""

    def _submit_command(self, command: str) -> Any:
        p = self.parameters
        ntasks = p.get("tasks_per_node", 1)
        gpus = p.get("visible_gpus", ()) or range(p.get("gpus_per_node", 0))
        gpus = list(gpus)[:p.get("gpus_per_node", 0)]
        setup = list(p.get("setup", ()))
        env = {**os.environ,  # the variables submitit's controller and its job environment read
               "SUBMITIT_LOCAL_NTASKS": str(ntasks), "SUBMITIT_LOCAL_COMMAND": command,
               "SUBMITIT_LOCAL_TIMEOUT_S": str(int(60 * p.get("timeout_min", 2.0))),
               "SUBMITIT_LOCAL_SIGNAL_DELAY_S": str(int(p.get("signal_delay_s", 30))),
               "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
               "SUBMITIT_STDERR_TO_STDOUT": "1" if p.get("stderr_to_stdout", False) else "",
               "SUBMITIT_EXECUTOR": "local", "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
               "SUBMITIT_LOCAL_WITH_SHELL": "1" if setup else ""}
        cmd: Any = [sys.executable, "-m", CONTROLLER_MODULE, str(self.folder)]
        if setup:  # launcher.setup: a shell runs its lines, then the controller (whose job id is the shell's pid)
            cmd = " && ".join(setup + [shlex.join(cmd)])
        process = subprocess.Popen(cmd, shell=bool(setup), env=env)
        return _local.LocalJob(folder=self.folder, job_id=str(process.pid), process=process,
                               tasks=list(range(ntasks)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m focalexp.sweep.backends.local_controller SUBMITIT_FOLDER")
    Controller(Path(sys.argv[1])).run()
