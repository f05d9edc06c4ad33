"""Before and after a sweep runs: its dry run (runs, compute, backend, what an existing sweep dir already
holds) and :func:`wait` (follow every run to its end). Library functions behind ``focalexp sweep
--dry-run`` and ``--wait``; neither imports torch for FocalNet runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .spec import Run, SweepSpec
from .status import RunState, retry_hold, run_states
from .store import SweepDir

# states a run does not leave by itself: waiting for them is over
SETTLED = ("done", "failed", "cancelled", "stopped", "killed", "timeout", "missing")


@dataclass
class DryRun:
    """What ``focalexp sweep SPEC`` would do, computed without writing or submitting anything."""

    spec: SweepSpec
    sweep_dir: Path
    backend: str  # the backend the sweep goes to (``auto`` resolved)
    backend_reason: str
    runs: list[Run]
    estimates: dict[str, dict[str, Any]]  # run id -> the task's estimate
    totals: dict[str, Any]
    existing: dict[str, str] = field(default_factory=dict)  # run id -> state, for a sweep dir that exists
    held: set[str] = field(default_factory=set)  # killed/timed-out runs a re-run would leave (retry_hold)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "task": self.spec.task, "dir": str(self.sweep_dir), "backend": self.backend,
                "backend_reason": self.backend_reason, "totals": self.totals,
                "runs": [{"run_id": r.run_id, "axes": r.axes, "seed": r.seed, "state": self.existing.get(r.run_id),
                          **self.estimates[r.run_id]} for r in self.runs]}


def dry_run(spec: SweepSpec, sweep_dir: str | Path, runs: list[Run] | None = None) -> DryRun:
    """Expand and validate ``spec`` (data on disk not required), estimate every run's compute, name the
    backend ``launcher.cluster`` resolves to, and read the states of the runs an existing sweep dir holds."""
    from . import estimate, estimate_totals
    from .backends import auto_order, resolve_backend
    from .spec import expand

    runs = runs if runs is not None else expand(spec, check_data_present=False)
    rows = estimate(spec, runs)
    backend = resolve_backend(spec.launcher.cluster).name
    if spec.launcher.cluster == "auto":
        skipped = [b for b in auto_order() if b.name != backend][:1]
        reason = (f"auto: {backend} is the first available" + (f"; {skipped[0].name}: {skipped[0].unavailable}"
                                                               if skipped and not skipped[0].available() else ""))
    else:
        reason = f"launcher.cluster: {spec.launcher.cluster}"
    sweep = SweepDir(sweep_dir)
    existing: dict[str, str] = {}
    held: set[str] = set()
    if sweep.manifest_path.is_file():
        try:
            if sweep.manifest().get("name") == spec.name:
                states = run_states(sweep)
                existing = {s.run_id: s.state for s in states}
                held = {s.run_id for s in states if retry_hold(s, spec.launcher.max_retries)}
        except Exception:  # noqa: BLE001 - a damaged sweep dir is reported by `launch`, not by a dry run
            existing, held = {}, set()
    return DryRun(spec, Path(sweep_dir), backend, reason, runs, {r["run_id"]: r for r in rows},
                  estimate_totals(spec, rows), existing, held)


def wait(sweep_dir: str | Path, *, poll_s: float = 5.0, on_poll: Callable[[list[RunState]], None] | None = None,
         timeout_s: float | None = None) -> list[RunState]:
    """Poll the sweep's states until every run is settled (:data:`SETTLED`), calling ``on_poll`` after
    each poll; returns the last states. ``timeout_s``: give up then and return what is known."""
    sweep = SweepDir(sweep_dir)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        states = run_states(sweep)
        if on_poll is not None:
            on_poll(states)
        if all(s.state in SETTLED for s in states) or (deadline is not None and time.monotonic() > deadline):
            return states
        time.sleep(poll_s)
