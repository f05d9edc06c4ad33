"""The training callable for submitit: checkpointable, so SLURM preemption/timeouts requeue it."""

from __future__ import annotations

from typing import Any, Mapping

import submitit

from .config import resolve_run_config
from .loop import train


class TrainTask(submitit.helpers.Checkpointable):
    """``TrainTask()(config, out)`` trains the resolved run config ``config`` into ``out``.

    On the preemption signal the trainer saves ``last.pth`` at the next step boundary and hands over to
    submitit, which calls :meth:`checkpoint` (inherited: resubmit the same call) and requeues the job;
    the requeued job finds ``last.pth`` in ``out`` and continues exactly where it stopped.
    """

    def __call__(self, config: Mapping[str, Any], out: str) -> dict:
        cfg = resolve_run_config(config)
        result = train(cfg, out, progress=False)
        if result.get("status") == "failed":
            # a failed run must look failed to the scheduler too (not COMPLETED, as with Hydra)
            raise RuntimeError(f"run failed: {result.get('reason')}")
        return result


def run_train(config: Mapping[str, Any], out: str, threads: int | None = None) -> dict:
    """The sweep's ``train`` task: ``threads`` (the job's cores) applies unless the config sets it."""
    config = dict(config)
    if threads and not (config.get("train") or {}).get("threads"):
        config["train"] = {**(config.get("train") or {}), "threads": threads}
    return TrainTask.__call__(TrainTask(), config, out)
