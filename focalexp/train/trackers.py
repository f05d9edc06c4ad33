"""Experiment trackers: where a run's scalars go besides ``metrics.jsonl`` (``train.trackers``).

Built in: ``tensorboard`` (the default: event files in ``RUN/tb/``), ``wandb`` and ``mlflow`` (optional
extras: ``pip install focalexp[wandb]``, ``focalexp[mlflow]``). Each is configured by its tool's own
environment variables (``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE``; ``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``), so a run config names trackers but never holds credentials or servers.

The tracker run's id is the focalexp run id (the config hash): a requeued or resumed run continues the
same tracker run. Steps are optimizer steps (``global_step``, restored from ``last.pth``), so no step
is logged twice: TensorBoard purges what a hard-killed process logged after its last checkpoint, W&B
and MLflow are resumed by id. Only rank 0 logs. A tracker that cannot start or fails mid-run (package
missing, not logged in, server down) costs one warning line; the run goes on without it.

Your own tracker, from your own package: subclass :class:`Tracker` (constructible without arguments;
one instance per run) and call ``register_tracker(MyTracker)`` or declare an entry point::

    [project.entry-points."focalexp.trackers"]
    aim = "mypkg.tracking:AimTracker"

This module imports no tracking library (and not torch) until a tracker starts: the config's
validation uses it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from ..errors import ConfigError, did_you_mean
from ..plugins import Plugins

ENTRY_POINT_GROUP = "focalexp.trackers"


@dataclass
class TrackedRun:
    """What a tracker learns about the run when it starts."""

    run_id: str          # the config hash: the tracker run's id (or tag)
    run_dir: Path
    config: dict         # the resolved run config (RunConfig.to_dict())
    start_step: int      # optimizer steps already done (0 for a fresh run)
    name: str = ""       # a readable name: preset, dataset, seed

    @property
    def resumed(self) -> bool:
        return self.start_step > 0

    @property
    def group(self) -> str:
        """The sweep the run belongs to (its ``SWEEP/runs/ID`` dir's ``sweep.json`` name), or "": W&B groups
        a sweep's runs by it, MLflow files them in an experiment of that name."""
        d = Path(self.run_dir)
        if d.parent.name != "runs":
            return ""
        manifest = d.parent.parent / "sweep.json"
        try:  # a user file: any problem means no group
            name = json.loads(manifest.read_bytes()).get("name") if manifest.stat().st_size < 2**28 else None
        except (OSError, ValueError, RecursionError, AttributeError):
            return ""
        return name[:128] if isinstance(name, str) and name.isprintable() else ""

    def tracker_id(self, tracker: str) -> str:
        """The id of this run in ``tracker``: the config hash for the run dir's first training, kept in
        ``RUN/tracker_ids.json`` so that every resume and requeue continues it; a run dir trained again
        from scratch (its checkpoint deleted) gets ``HASH-2``, ``HASH-3``... so no history is mixed."""
        path = Path(self.run_dir) / "tracker_ids.json"
        try:
            ids = json.loads(path.read_text())
            ids = ids if isinstance(ids, dict) else {}
        except (OSError, ValueError, RecursionError):
            ids = {}
        old = ids.get(tracker)
        old = old if isinstance(old, str) and old.startswith(self.run_id) else None
        if self.resumed:
            return old or self.run_id
        if old is None:
            new = self.run_id
        else:
            n = old[len(self.run_id) + 1:]
            new = f"{self.run_id}-{int(n) + 1 if n.isdigit() else 2}"
        ids[tracker] = new
        from ..fileio import atomic_write_text

        atomic_write_text(path, json.dumps(ids))
        return new


class Tracker:
    """One kind of tracker. ``start`` opens (or resumes) the tracker run, ``log`` records scalars at an
    optimizer step (steps increase), ``finish`` closes it with the run's status (``done``, ``stopped``,
    ``interrupted`` or ``failed``). Exceptions are fine: :class:`Trackers` turns them into a warning."""

    name: ClassVar[str] = ""
    install: ClassVar[str] = ""  # what to pip install when its package is missing

    def start(self, run: TrackedRun) -> None:
        raise NotImplementedError

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        raise NotImplementedError

    def finish(self, status: str) -> None:
        pass

    def __repr__(self) -> str:
        return f"<tracker {self.name!r}: {type(self).__module__}.{type(self).__qualname__}>"


# ---------------------------------------------------------------------------- built-in trackers
def _after_existing_event_files(folder: Path, most_s: float = 2.0) -> None:
    """Wait (at most ``most_s``) until this second is past the newest event file's in ``folder``. The readers
    take a folder's event files in name order, ``events.out.tfevents.<second>.<host>.<pid>.<counter>``, and
    apply a resumed run's purge only to the files read before it: a file started in the same second by
    another process (or by this one, its counter at 10 against 9) could sort after it and keep the steps
    that were to be dropped."""
    newest = 0
    for p in folder.glob("events.out.tfevents.*") if folder.is_dir() else ():
        second = p.name.split(".")[3]
        if second.isdigit():
            newest = max(newest, int(second))
    deadline = time.monotonic() + most_s  # a file from the future (another node's clock): not waited for
    while int(time.time()) <= newest and time.monotonic() < deadline:
        time.sleep(0.05)


class TensorBoardTracker(Tracker):
    """Event files in ``RUN/tb/``; ``tensorboard --logdir sweeps/NAME/runs`` shows every run of a sweep."""

    name = "tensorboard"
    install = "tensorboard"

    def start(self, run: TrackedRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a killed process wrote after its last checkpoint are dropped by the readers
        # (TensorBoard, EventAccumulator); step start_step itself was logged before that checkpoint
        purge = run.start_step + 1 if run.resumed else 0
        if run.resumed:
            _after_existing_event_files(run.run_dir / "tb")
        self.writer = SummaryWriter(log_dir=str(run.run_dir / "tb"), purge_step=purge, flush_secs=30)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, global_step=step)

    def finish(self, status: str) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run with ``id`` = the run id (:meth:`TrackedRun.tracker_id`), resumed when it exists, in the
    group of its sweep; project from ``WANDB_PROJECT`` (default ``focalexp``), files in ``WANDB_DIR``
    (default: the run dir). The same config trained in two run dirs shares the W&B id (W&B keeps one
    history per id): give the second a ``WANDB_PROJECT`` of its own."""

    name = "wandb"
    install = "focalexp[wandb]"

    def start(self, run: TrackedRun) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "focalexp", id=run.tracker_id("wandb"), resume="allow",
            name=run.name, group=run.group or None, tags=[run.group] if run.group else None,
            config=run.config, dir=None if os.environ.get("WANDB_DIR") else str(run.run_dir),
            settings=wandb.Settings(console="off"))

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def finish(self, status: str) -> None:
        self.run.finish(exit_code=1 if status == "failed" else 0)


class MlflowTracker(Tracker):
    """An MLflow run tagged ``focalexp.run_id`` (a resume finds the latest by that tag and continues it
    by its run_id), in the experiment ``MLFLOW_EXPERIMENT_NAME`` (default: the sweep's name, else ``focalexp``) of
    ``MLFLOW_TRACKING_URI``. Steps that a killed process logged after its last checkpoint are not logged
    again (MLflow cannot delete them). Requests to a server get a short timeout and few retries unless
    ``MLFLOW_HTTP_REQUEST_*`` say otherwise, so a server that is down costs seconds, once."""

    name = "mlflow"
    install = "focalexp[mlflow]"
    TAG = "focalexp.run_id"
    STATUS = {"done": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}

    def start(self, run: TrackedRun) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self.Metric = Metric
        self.client = c = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.group or "focalexp"
        exp = c.get_experiment_by_name(name)
        eid = exp.experiment_id if exp is not None else c.create_experiment(name)
        # a resumed run continues the latest MLflow run of its id; a fresh one (the same experiment trained
        # again, in another dir or from scratch) gets its own, so that no history is mixed or dropped
        found = c.search_runs([eid], filter_string=f"tags.`{self.TAG}` = '{run.run_id}'", max_results=1,
                              order_by=["attributes.start_time DESC"]) if run.resumed else []
        self.logged: dict[str, int] = {}  # key -> last step a killed process logged after its last checkpoint
        if found:
            self.run_id = found[0].info.run_id
            c.update_run(self.run_id, status="RUNNING")
            for key in found[0].data.metrics:  # resume is exact: those steps would log the same values again
                last = max((m.step for m in c.get_metric_history(self.run_id, key)), default=-1)
                if last > run.start_step:
                    self.logged[key] = last
        else:
            self.run_id = c.create_run(eid, run_name=run.run_id, tags={
                self.TAG: run.run_id, "mlflow.note.content": run.name,
                **({"focalexp.sweep": run.group} if run.group else {})}).info.run_id
            c.log_batch(self.run_id, params=[_param(k, v) for k, v in _flatten(run.config).items()][:100])

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        metrics = [self.Metric(k, v, now, step) for k, v in scalars.items() if step > self.logged.get(k, -1)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FINISHED"))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param(k: str, v: Any):
    from mlflow.entities import Param

    return Param(k, str(v)[:500])


# ---------------------------------------------------------------------------- the registry
def _check_name(name: str) -> None:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"tracker name {name!r}: letters, digits and '_' only")


_TRACKERS: Plugins[Tracker] = Plugins(Tracker, ENTRY_POINT_GROUP, "train.trackers", {
    "tensorboard": f"{__name__}:TensorBoardTracker", "wandb": f"{__name__}:WandbTracker",
    "mlflow": f"{__name__}:MlflowTracker"}, _check_name)


def register_tracker(tracker: Tracker | type[Tracker]) -> Tracker | type[Tracker]:
    """Add a tracker (a class, or an instance whose class is constructible without arguments) under its
    ``name``; usable as a class decorator."""
    inst = _TRACKERS.register(tracker)
    return tracker if isinstance(tracker, type) else inst


def tracker_names() -> list[str]:
    return _TRACKERS.names()


def check_trackers(names: Sequence[str], key: str = "train.trackers") -> None:
    """Every name is a known tracker, each once; an unknown one is one line with the closest name. Whether
    its package is installed is not checked here (the config may be resolved away from the node)."""
    known = tracker_names()
    for i, name in enumerate(names):
        if name not in known and _TRACKERS.find(name) is None:
            raise ConfigError(f"unknown tracker '{name}'{did_you_mean(name, known)}; allowed: {', '.join(known)}",
                              key=key)
        if name in names[:i]:
            raise ConfigError(f"'{name}' is listed twice", key=key)


def _warn(name: str, what: str, e: BaseException | None = None) -> None:
    if e is not None:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        what = f"{what} ({type(e).__name__}: {first})"
    print(f"focalexp: warning: tracker {name} {what}; the run goes on without it", file=sys.stderr, flush=True)


class Trackers:
    """The run's trackers behind one call each. A tracker that raises (when starting, logging or
    finishing) is dropped with one warning line; nothing here ever fails the run."""

    def __init__(self, names: Sequence[str] = (), run: TrackedRun | None = None):
        self.active: list[Tracker] = []
        for name in names:
            tracker = None
            try:
                tracker = type(_TRACKERS.find(name) or _missing(name))()
                tracker.start(run)  # type: ignore[arg-type]
            except ImportError as e:
                hint = f" (pip install '{tracker.install}')" if tracker is not None and tracker.install else ""
                _warn(name, f"needs the '{e.name or e}' package{hint}")
                continue
            except Exception as e:  # noqa: BLE001 - a tracker never fails a run
                _warn(name, "could not start", e)
                continue
            self.active.append(tracker)

    def __bool__(self) -> bool:
        return bool(self.active)

    def log(self, scalars: Mapping[str, float | None], step: int) -> None:
        clean = {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)}
        if not clean:
            return
        for tracker in list(self.active):
            try:
                tracker.log(clean, step)
            except Exception as e:  # noqa: BLE001
                _warn(tracker.name, "failed", e)
                self.active.remove(tracker)

    def finish(self, status: str) -> None:
        for tracker in self.active:
            try:
                tracker.finish(status)
            except Exception as e:  # noqa: BLE001
                _warn(tracker.name, "could not finish", e)
        self.active = []


def _missing(name: str) -> Tracker:
    raise ConfigError(f"unknown tracker '{name}'", key="train.trackers")


# the names of metrics.jsonl's per-epoch columns in the trackers
EPOCH_SCALARS = {"epoch": "epoch", "train_loss": "train_epoch/loss", "lr": "train_epoch/lr",
                 "images_per_s": "train_epoch/images_per_s", "epoch_seconds": "train_epoch/seconds",
                 "eval_loss": "eval/loss", "top1": "eval/top1", "top5": "eval/top5"}


DETECTION_PREFIXES = ("box_ap", "mask_ap")  # COCOeval's numbers of a detection run (box_ap50, mask_ap_s, ...)


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row as tracker scalars (``eval/top1``, ``eval_ema/top1``, ``train_epoch/loss``; a
    detector's COCOeval numbers as ``eval/box_ap``, ``eval/mask_ap75``, ...; per-class dicts stay in the row)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in EPOCH_SCALARS:
            out[EPOCH_SCALARS[k]] = v
        elif k.removeprefix("ema_").startswith(DETECTION_PREFIXES) and isinstance(v, (int, float)) \
                and not isinstance(v, bool):
            out[f"eval_ema/{k[4:]}" if k.startswith("ema_") else f"eval/{k}"] = v
        elif k.startswith("ema_") and k[4:] in EPOCH_SCALARS:
            out[EPOCH_SCALARS[k[4:]].replace("eval/", "eval_ema/")] = v
    return out


__all__ = ["Tracker", "TrackedRun", "Trackers", "register_tracker", "tracker_names", "check_trackers",
           "epoch_scalars", "ENTRY_POINT_GROUP", "TensorBoardTracker", "WandbTracker", "MlflowTracker"]
