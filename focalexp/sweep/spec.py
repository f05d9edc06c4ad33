"""A sweep spec: a base run config, the axes that vary, seeds, the task, the launcher; its runs.

``grid`` axes (dotted run-config keys → lists) form a cartesian product; each ``zip`` group is one
axis whose keys vary together; ``exclude`` rules drop combinations (a rule matches a run when every
key it names has the rule's value, or one of its values if the rule gives a list); ``seeds``
multiply everything. Every run is resolved and validated (its model built on the meta device)
before anything is written or submitted; an error names the run and the key.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from ..config import build, load_yaml, to_plain
from ..config import opt as _f
from ..errors import ConfigError, FocalexpError, did_you_mean
from ..config import set_dotted


class _Clusters:
    """``launcher.cluster``'s choices: ``auto`` and every backend in :mod:`focalexp.sweep.backends`'s
    registry, read when a spec is checked (the registry names backends without importing them)."""

    def __iter__(self) -> Iterator[str]:
        from .backends import AUTO, backend_names

        return iter([AUTO, *backend_names()])

    def __contains__(self, value: object) -> bool:
        return value in list(self)


CLUSTERS = _Clusters()


@dataclass
class LauncherConfig:
    cluster: str = _f("auto", "where the runs go: auto (slurm when srun is on PATH, else local) or a backend of "
                      "focalexp.sweep.backends: slurm, local, debug (in-process), or one you registered",
                      choices=CLUSTERS)
    partition: Optional[str] = _f(None, "SLURM partition")
    account: Optional[str] = _f(None, "SLURM account")
    qos: Optional[str] = _f(None, "SLURM quality of service")
    constraint: Optional[str] = _f(None, "SLURM node constraint")
    timeout_min: int = _f(60, "time limit of one job in minutes (a Checkpointable run requeues past it)", min=1)
    nodes: int = _f(1, "nodes per run", min=1)
    tasks_per_node: int = _f(1, "processes per node (one per GPU for DDP)", min=1)
    gpus_per_node: int = _f(0, "GPUs per node", min=0)
    cpus_per_task: Optional[int] = _f(None, "CPU cores per process (also torch's thread count)", min=1)
    mem_gb: Optional[float] = _f(None, "memory per node in GB", min=0.0)
    array_parallelism: Optional[int] = _f(
        None, "runs at once (SLURM: the array throttle, default 256; local: default cores / cpus_per_task)", min=1)
    setup: list[str] = _f([], "shell lines run before each job (module load, conda activate, ...)")
    max_num_timeout: int = _f(3, "requeues allowed after time-outs (preemptions always requeue)", min=0)
    max_retries: int = _f(2, "times in a row a re-run of the sweep resubmits a run that was killed (a signal, out "
                          "of memory, a lost node) or timed out; past it, or killed twice for out of memory, the "
                          "run waits for --retry-failed", min=0)
    signal_delay_s: int = _f(90, "seconds before the time limit at which the job is told to save", min=0)
    max_array_size: Optional[int] = _f(None, "split arrays above this many runs (default: the cluster's "
                                       "MaxArraySize, or 1001)", min=1)
    snapshot: bool = _f(False, "copy the code into the sweep dir (SWEEP/snapshots/) when the runs are submitted "
                        "and run the jobs from that copy, so that later edits do not reach queued jobs")


@dataclass
class EstimateConfig:
    gpu_tflops: float = _f(100.0, "sustained TFLOP/s per GPU assumed for the GPU-hour estimate", min=1e-6)
    train_images: Optional[int] = _f(None, "images per epoch (default: data.train_size, the built-in "
                                     "dataset's size, or ImageNet-1K's 1,281,167 for 1000 classes)", min=1)


class _Metrics:
    """The metrics a report can compare: the ``result.json`` keys :data:`focalexp.sweep.collect.METRICS`
    names (read when a spec is checked; collect imports this module)."""

    def __iter__(self) -> Iterator[str]:
        from .collect import METRICS

        return iter(METRICS)

    def __contains__(self, value: object) -> bool:
        return value is None or value in list(self)  # None: an Optional field left unset


@dataclass
class PaperValue:
    match: dict = field(default_factory=dict, metadata={"help": "axis -> value: the arm(s) this number is of"})
    value: float = _f(None, "the published number, in the metric's unit (top-1 in %)")


@dataclass
class PaperResults:
    """The published result of each arm, for the report to put beside ours."""

    source: str = _f("", "where the numbers are from, e.g. 'Yang et al. 2022, Table 14'")
    metric: str = _f("top1", "the result.json metric the numbers are of", choices=_Metrics())
    values: list[PaperValue] = _f([], "one entry per arm: {match: {axis: value, ...}, value: number}")


@dataclass
class ReportOptions:
    baseline: dict = field(default_factory=dict, metadata={
        "help": "axis -> value: the arm the others are compared with (paired by seed); axes it leaves out "
                "are compared within their own values"})
    metric: Optional[str] = _f(None, "the metric the intervals and comparisons are of (default: paper.metric, "
                               "else top1 or box_ap when the runs report it)", choices=_Metrics())


@dataclass
class SweepSpec:
    name: str = _f("", "sweep name (letters, digits, - _ .); the default sweep dir is sweeps/NAME")
    description: str = _f("", "what the sweep asks")
    base: dict = field(default_factory=dict, metadata={"help": "a run config, as for `focalexp train`"})
    grid: dict = field(default_factory=dict, metadata={"help": "dotted run-config key -> list of values"})
    zip: list[dict] = _f([], "groups of keys that vary together (equal-length lists)")
    exclude: list[dict] = _f([], "rules: {key: value or [values]}; matching runs are dropped")
    seeds: list[int] = _f([0], "seeds; every combination runs once per seed")
    task: str = _f("train", "what each run does: train (the default), measure (params, GMACs, throughput; no "
                   "training), or a task registered from your package (focalexp.tasks)")
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    report: ReportOptions = field(default_factory=ReportOptions)
    paper: Optional[PaperResults] = _f(None, "the published result of each arm (source, metric, values)")
    # the task's own options: the spec section named like the task (``measure:``), typed by the task
    task_options: Any = field(default=None, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, the task's options under the task's name (as written in YAML)."""
        d = {k: to_plain(getattr(self, k)) for k in self.__dataclass_fields__ if k != "task_options"}
        if self.task_options is not None:
            d[self.task] = to_plain(self.task_options)
        return d


@dataclass
class Run:
    """One point of the sweep: its axis values, seed, resolved config and id. ``config`` is what travels
    to the node (plain data, resolved and validated once, here); ``typed`` is the task's typed config."""

    run_id: str
    axes: dict[str, Any]
    seed: int
    config: dict[str, Any]  # the resolved run config (plain)
    task: str
    typed: Any = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        return run_label(self.axes, self.seed)


def run_label(axes: Mapping[str, Any], seed: int) -> str:
    """``model.focal_levels=2, seed=0``: how errors and tables name a run."""
    return ", ".join([f"{k}={str(v).replace(' ', '')}" for k, v in axes.items()] + [f"seed={seed}"])


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def apply_spec_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``--set`` on a spec: ``launcher.cluster=local``, ``base.train.epochs=1``, ``grid.model.focal_levels=[0,4]``
    (after ``grid.`` / ``exclude.`` the rest of the key is one axis name), ``seeds=[0,1,2]``."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head == "grid" and rest:
            grid = out.setdefault("grid", {})
            if not isinstance(grid, dict):
                raise ConfigError(f"--set {key}: grid is not a mapping")
            grid[rest] = value
        else:
            set_dotted(out, key, value)
    return out


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    raw = load_yaml(path, "spec")
    if raw is None:
        raise ConfigError(f"'{path}' is empty; a sweep spec is a mapping with keys name, base, grid, ...", key="spec")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{path}': expected a mapping with keys name, base, grid, ... "
                          f"(got a {type(raw).__name__})", key="spec")
    run_keys = {"recipe", "model", "data", "train", "eval"}
    if raw and not ({"name", "base", "grid", "zip"} & set(raw)) and set(raw) <= run_keys | {"seed"}:
        raise ConfigError(f"'{path}' looks like a run config (sections {', '.join(map(str, raw))}), not a "
                          f"sweep spec; run it with `focalexp train {path} --out DIR`, or put it under 'base:' "
                          "of a spec", key="spec")
    return parse_spec(dict(raw), overrides, source=str(path))


def _split_task_options(raw: dict[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    """The spec without the task's section, the task, and the task's typed options."""
    from ..tasks import get_task, task_names

    name = raw.get("task", "train")
    task = get_task(name)
    section = raw.pop(task.name, None) if task.options is not None else None
    for other in task_names():
        if other != task.name and other in raw and other not in SweepSpec.__dataclass_fields__:
            raise ConfigError(f"options of task '{other}', but the sweep's task is '{task.name}'", key=other)
    if "task_options" in raw:
        raise ConfigError(f"the task's options go under '{task.name}:'", key="task_options", unknown=True)
    if task.options is None:
        return raw, task, None
    if section is not None and not isinstance(section, Mapping):
        raise ConfigError(f"{task.name}: expected a mapping of options, got {section!r}")
    try:
        options = build(task.options, dict(section or {}))
    except ConfigError as e:
        raise e.under(task.name) from e
    return raw, task, options


def parse_spec(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, source: str = "spec") -> SweepSpec:
    raw = apply_spec_overrides(dict(raw), overrides or {})
    raw, task, options = _split_task_options(raw)
    spec: SweepSpec = build(SweepSpec, raw)
    spec.task_options = options
    if not spec.name:
        raise ConfigError(f"{source} needs a name (it names the sweep dir)", key="name")
    if not _NAME.match(spec.name):
        raise ConfigError(f"{spec.name!r} may hold only letters, digits, '-', '_' and '.'", key="name")
    if not spec.seeds:
        raise ConfigError("the list is empty; give at least one seed, e.g. [0]", key="seeds")
    if len(set(spec.seeds)) != len(spec.seeds) or any(s < 0 for s in spec.seeds):
        raise ConfigError(f"expected distinct non-negative integers, got {spec.seeds}", key="seeds")
    if not task.seeded and len(spec.seeds) > 1:
        raise ConfigError(f"a {task.name} sweep has nothing random to seed; give one seed, got {spec.seeds}", key="seeds")
    for k, v in spec.grid.items():
        if not isinstance(v, list):
            raise ConfigError(f"expected a list of values, got {v!r}", key=f"grid.{k}")
        if not v:
            raise ConfigError("the list is empty; give at least one value", key=f"grid.{k}")
        if k == "seed":
            raise ConfigError("list seeds under 'seeds', not as an axis", key="grid.seed")
    seen = set(spec.grid)
    for i, group in enumerate(spec.zip):
        if not group:
            raise ConfigError("the group is empty", key=f"zip[{i}]")
        lengths = set()
        for k, v in group.items():
            if not isinstance(v, list) or not v:
                raise ConfigError(f"expected a non-empty list of values, got {v!r}", key=f"zip[{i}].{k}")
            if k in seen:
                raise ConfigError("the key is already an axis", key=f"zip[{i}].{k}")
            seen.add(k)
            lengths.add(len(v))
        if len(lengths) > 1:
            raise ConfigError(f"lists of different lengths {sorted(lengths)}; keys that vary together "
                              "need one value each per point", key=f"zip[{i}]")
    for i, rule in enumerate(spec.exclude):
        if not rule:
            raise ConfigError("the rule is empty", key=f"exclude[{i}]")
        for k in rule:
            if k not in seen:
                raise ConfigError(f"not an axis of the sweep{did_you_mean(k, seen)}", key=f"exclude[{i}].{k}")
    touched = any(str(k).split(".")[0] in ("grid", "zip", "exclude") for k in (overrides or {}))
    _check_report_sections(spec, check_points=not touched)
    return spec


def _axis_values(spec: SweepSpec) -> dict[str, list[Any]]:
    values = {k: list(v) for k, v in spec.grid.items()}
    for group in spec.zip:
        values.update({k: list(v) for k, v in group.items()})
    return values


def check_match(spec: SweepSpec, rule: Any, key: str, check_points: bool = True) -> None:
    """A mapping of axis -> value that must name axes of the sweep, values of those axes and (with
    ``check_points``, i.e. unless --set changed the grid) at least one arm; errors name ``key``."""
    values = _axis_values(spec)
    if not isinstance(rule, Mapping) or not rule:
        raise ConfigError(f"expected a mapping of axis -> value, e.g. {{{next(iter(values), 'model.focal_levels')}: "
                          f"...}}, got {rule!r}", key=key)
    for k, v in rule.items():
        if k not in values:
            raise ConfigError(f"not an axis of the sweep{did_you_mean(str(k), values)}", key=f"{key}.{k}")
        if check_points and not any(_same_value(v, x) for x in values[k]):
            raise ConfigError(f"{v!r} is not a value of the axis{did_you_mean(str(v), [str(x) for x in values[k]])};"
                              f" its values: {', '.join(str(x) for x in values[k])}", key=f"{key}.{k}")
    if check_points and count_runs(spec)[0] <= 100_000 and not any(
            all(_same_value(p.get(k), v) for k, v in rule.items()) for p in _iter_points(spec)):
        raise ConfigError("matches no arm of the sweep (no grid point has all these values)", key=key)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _check_report_sections(spec: SweepSpec, check_points: bool = True) -> None:
    """``report.baseline`` and every ``paper.values[i].match`` name arms of the sweep; each arm has at
    most one paper value."""
    if spec.report.baseline:
        check_match(spec, spec.report.baseline, "report.baseline", check_points)
    if spec.paper is None:
        return
    if spec.report.metric is not None and spec.report.metric != spec.paper.metric:
        raise ConfigError(f"{spec.report.metric!r}, but paper.metric is {spec.paper.metric!r}; the report compares "
                          "one metric with the paper's", key="report.metric")
    if not spec.paper.source.strip():
        raise ConfigError("say where the numbers are from, e.g. 'Yang et al. 2022, Table 14'", key="paper.source")
    if not spec.paper.values:
        raise ConfigError("the list is empty; give {match: {axis: value}, value: number} per arm", key="paper.values")
    claimed: dict[int, int] = {}
    points = _points(spec) if check_points and count_runs(spec)[0] <= 100_000 else []
    for i, pv in enumerate(spec.paper.values):
        if pv.value is None:
            raise ConfigError("the published number is missing", key=f"paper.values[{i}].value")
        check_match(spec, pv.match, f"paper.values[{i}].match", check_points)
        for j, p in enumerate(points):
            if all(_same_value(p.get(k), v) for k, v in pv.match.items()):
                if j in claimed:
                    raise ConfigError(f"the arm {run_label(p, 0).rsplit(', seed=', 1)[0]} already has "
                                      f"paper.values[{claimed[j]}]", key=f"paper.values[{i}].match")
                claimed[j] = i


def axis_keys(spec: SweepSpec) -> list[str]:
    keys = list(spec.grid)
    for group in spec.zip:
        keys.extend(group)
    return keys


MAX_RUNS = 10_000  # above this a sweep needs --yes (every run is resolved and validated before submission)


def count_runs(spec: SweepSpec, exact_up_to: int = 1_000_000) -> tuple[int, bool]:
    """How many runs the spec makes, without building them: ``(n, exact)``. The cartesian size (times
    seeds) when no ``exclude`` rule applies; with rules, the points are walked lazily when there are at
    most ``exact_up_to`` of them, else the cartesian size is an upper bound (``exact`` False)."""
    sizes = [len(v) for v in spec.grid.values()] + [len(next(iter(g.values()))) for g in spec.zip]
    total = math.prod(sizes) * len(spec.seeds)
    if not spec.exclude:
        return total, True
    if total > exact_up_to:
        return total, False
    return sum(1 for _ in _iter_points(spec)) * len(spec.seeds), True


def check_run_count(spec: SweepSpec, limit: int | None = MAX_RUNS) -> int:
    """Refuse, within moments, a sweep of more than ``limit`` runs (None: no limit)."""
    n, exact = count_runs(spec)
    if limit is not None and n > limit:
        shape = " x ".join([str(len(v)) for v in spec.grid.values()] + [str(len(next(iter(g.values()))))
                                                                      for g in spec.zip])
        raise ConfigError(f"{'' if exact else 'up to '}{n:,} runs ({shape or '1'} points x {len(spec.seeds)} "
                          f"seed(s)); more than {limit:,} needs --yes (each run is validated before anything "
                          "is submitted), or trim the grid", key="grid")
    return n


def _points(spec: SweepSpec) -> list[dict[str, Any]]:
    return list(_iter_points(spec))


def _iter_points(spec: SweepSpec) -> Iterator[dict[str, Any]]:
    dims: list[list[dict[str, Any]]] = [[{k: v} for v in vals] for k, vals in spec.grid.items()]
    for group in spec.zip:
        keys = list(group)
        n = len(group[keys[0]])
        dims.append([{k: group[k][i] for k in keys} for i in range(n)])
    for combo in itertools.product(*dims):
        p: dict[str, Any] = {}
        for part in combo:
            p.update(part)
        if not any(_matches(p, rule) for rule in spec.exclude):
            yield p


def _matches(point: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    for k, v in rule.items():
        allowed = v if isinstance(v, list) and not isinstance(point.get(k), list) else [v]
        if point.get(k) not in allowed:
            return False
    return True


def expand(spec: SweepSpec, *, check_data_present: bool = True, max_runs: int | None = None) -> list[Run]:
    """Every run of the sweep, resolved and validated once by the spec's task; errors name the run and the
    key. With ``max_runs``, a larger sweep is refused at once (see :func:`check_run_count`)."""
    from ..tasks import get_task

    task = get_task(spec.task)
    check_run_count(spec, max_runs)
    points = _points(spec)
    if not points:
        raise ConfigError("every combination is excluded; the sweep has no runs", key="grid")
    base = dict(spec.base)
    if "seed" in base:
        raise ConfigError("list seeds under the spec's 'seeds' key", key="base.seed")
    runs: list[Run] = []
    ids: dict[str, str] = {}
    for point in points:
        for seed in spec.seeds:
            overrides = {**point, "seed": seed}
            label = run_label(point, seed)
            try:
                cfg = task.resolve(base, overrides, spec.task_options, check_data_present=check_data_present)
            except FocalexpError as e:
                raise _in_run(e, point, label) from e
            run_id = task.run_id(cfg, spec.task_options)
            if run_id in ids:
                raise ConfigError(f"run [{label}]: resolves to the same config as run [{ids[run_id]}] "
                                  "(an axis that changes nothing?)")
            ids[run_id] = label
            runs.append(Run(run_id, dict(point), seed, task.to_plain(cfg), task.name, typed=cfg))
    return runs


def _in_run(e: FocalexpError, point: Mapping[str, Any], label: str) -> FocalexpError:
    """The error of one run, with where it happened: the grid axis when the key itself is unknown and an
    axis brought it in, else the run (``e.axis`` / ``e.run``; the original error is the ``__cause__``)."""
    axis = e.key if e.unknown and e.key in point else None
    return e.in_run(label, axis=axis)
