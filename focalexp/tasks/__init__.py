"""What a run of a sweep can be: :class:`Task` objects in a registry, keyed by the spec's ``task:`` name.

The sweep, the launcher and the job on the node know a task only through this interface::

    task = get_task(spec.task)
    config = task.resolve(base, point_overrides, options)   # typed, validated once (in the expansion)
    run_id = task.run_id(config, options)                   # content hash: equal runs, equal ids
    plain = task.to_plain(config)                           # what travels to the node
    task.estimate(config, options, estimate)                # GMACs, images, compute; no torch needed
    settings = task.settings(launcher, options)             # keyword arguments of run()
    result = task.run(task.from_plain(plain), run_dir, settings)   # on the node; writes result.json

Built in: ``train`` (:mod:`focalexp.tasks.train`), ``measure`` (:mod:`focalexp.tasks.measure`) and
``detect`` (:mod:`focalexp.tasks.detect`).

Your own task, from your own package: subclass :class:`Task` and either call ``register_task(MyTask())``
(a notebook, a script) or declare an entry point, which ``focalexp sweep`` finds by name::

    # pyproject.toml of your package
    [project.entry-points."focalexp.tasks"]
    segment = "mypkg.tasks:SegmentTask"

A spec never names a module to import (``task: mypkg.tasks:SegmentTask`` is refused): a spec file is
untrusted input, and importing a module it names would run code; installing a package with an entry
point is the explicit act of trust.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

from ..errors import ConfigError, did_you_mean
from ..plugins import Plugins

ENTRY_POINT_GROUP = "focalexp.tasks"


class Task:
    """One kind of run. Subclasses set ``name`` (the spec's ``task:`` value), optionally ``options`` (a
    dataclass: the spec section named like the task, e.g. ``measure:``), and implement ``resolve``,
    ``run_id`` and ``run``; the other methods have working defaults."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[type | None] = None  # dataclass of the spec section ``<name>:``
    seeded: ClassVar[bool] = True  # False: nothing random to seed, a spec gives one seed

    def resolve(self, base: Mapping[str, Any], overrides: Mapping[str, Any], options: Any, *,
                check_data_present: bool = True) -> Any:
        """The typed, validated config of one run: ``base`` (the spec's ``base:``) with ``overrides`` (dotted
        keys: the run's axis values and ``seed``). Raise :class:`~focalexp.errors.ConfigError` naming the
        dotted key."""
        raise NotImplementedError

    def to_plain(self, config: Any) -> dict[str, Any]:
        """The resolved config as plain data (JSON/YAML): recorded in the manifest, carried to the node."""
        from ..config import to_plain

        return to_plain(config)

    def from_plain(self, plain: Mapping[str, Any]) -> Any:
        """Rebuild the typed config from :meth:`to_plain`'s output without validating it again."""
        return dict(plain)

    def run_id(self, config: Any, options: Any) -> str:
        """A content hash of what the run computes (operational knobs excluded)."""
        raise NotImplementedError

    def estimate(self, config: Any, options: Any, estimate: Any) -> dict[str, Any]:
        """What the run costs, for the dry run: at least ``gmacs`` (per image); optionally ``images`` (per
        epoch), ``epochs``, ``train_pmacs`` and ``gpu_hours``. Must not need torch where it can be helped."""
        return {}

    def uses_gpu(self, config: Any, launcher: Any) -> bool:
        return bool(getattr(launcher, "gpus_per_node", 0))

    def settings(self, launcher: Any, options: Any) -> dict[str, Any]:
        """Keyword arguments of :meth:`run` that come from the launcher and the task's options (the same
        for every run of the sweep)."""
        return {"threads": launcher.cpus_per_task}

    def run(self, config: Any, run_dir: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Execute on the node; write ``run_dir/result.json`` (``status``: done or failed) and return it."""
        raise NotImplementedError

    def default_options(self) -> Any:
        return self.options() if self.options is not None else None

    def __repr__(self) -> str:
        return f"<task {self.name!r}: {type(self).__module__}.{type(self).__qualname__}>"


def _check_name(name: str) -> None:
    if not name or not name.replace("_", "").isalnum():
        raise ValueError(f"task name {name!r}: letters, digits and '_' only")


_TASKS: Plugins[Task] = Plugins(Task, ENTRY_POINT_GROUP, "task", {
    "train": "focalexp.tasks.train:TrainTask", "measure": "focalexp.tasks.measure:MeasureTask",
    "detect": "focalexp.tasks.detect:DetectTask"}, _check_name)


def register_task(task: Task | type[Task]) -> Task:
    """Add ``task`` (an instance or a class) to the registry under ``task.name``; usable as a decorator
    on a class. Returns the registered instance."""
    inst = task() if isinstance(task, type) else task
    if isinstance(inst, Task) and inst.options is not None and not dataclasses.is_dataclass(inst.options):
        raise TypeError(f"task {inst.name!r}: options must be a dataclass, got {inst.options!r}")
    inst = _TASKS.register(inst)
    return task if isinstance(task, type) else inst


def task_names() -> list[str]:
    """Every task a spec may name: built in, registered, and installed through entry points."""
    return _TASKS.names()


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name is one line with the closest name."""
    if not isinstance(name, str):
        raise ConfigError(f"expected a task name, got {name!r}", key="task")
    if ":" in name or "/" in name:
        raise ConfigError(f"{name!r} names code to import; a spec file may not (register the task with an "
                          f"entry point in group '{ENTRY_POINT_GROUP}', or register_task() in Python)", key="task")
    found = _TASKS.find(name, register_task)
    if found is None:
        names = task_names()
        raise ConfigError(f"unknown value '{name}'{did_you_mean(name, names)}; allowed: {', '.join(names)}", key="task")
    return found


__all__ = ["Task", "register_task", "get_task", "task_names", "ENTRY_POINT_GROUP"]
