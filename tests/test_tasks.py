"""Tasks as objects: the registry, a user's own task (registered in Python or through an entry point)
going through a real sweep, and the resolve-once path (what travels to the node is not validated again)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from focalexp.config import opt
from focalexp.errors import ConfigError
from focalexp.sweep import collect, dry_run, expand, launch, parse_spec, status
from focalexp.tasks import get_task, register_task, task_names
from focalexp.tasks.train import RunConfigTask
from tests.conftest import tiny_run


@dataclass
class ScaleOptions:
    factor: float = opt(2.0, "what the lr is multiplied by", min=0.0)


class ScaleTask(RunConfigTask):
    """A task a user could write over run configs: no training, one number per run."""

    name = "scale_lr"
    description = "lr x factor (a test task)"
    options = ScaleOptions
    seeded = False
    needs_data = False

    def run_id(self, config, options):
        from focalexp.config import content_hash

        return content_hash({"task": self.name, "lr": config.train.lr, "factor": options.factor})

    def estimate(self, config, options, estimate):
        return {"gmacs": 0.0}

    def settings(self, launcher, options):
        return {"factor": options.factor}

    def run(self, config, run_dir, settings):
        from focalexp.fileio import atomic_write_text

        result = {"status": "done", "scaled": config.train.lr * settings["factor"]}
        atomic_write_text(Path(run_dir) / "result.json", json.dumps(result))
        return result


def _spec(task: str, **over) -> dict:
    base = tiny_run()
    base.pop("seed")
    spec = {"name": "t", "base": base, "grid": {"train.lr": [1e-3, 2e-3]}, "task": task,
            "launcher": {"cluster": "debug"}}
    spec.update(over)
    return spec


def test_builtin_tasks_are_registered_objects():
    assert {"train", "measure"} <= set(task_names())
    assert get_task("train").name == "train" and get_task("measure").options is not None
    with pytest.raises(ConfigError, match=r"task: unknown value 'trian' \(did you mean 'train'\?\)"):
        get_task("trian")


def test_a_spec_may_not_name_code_to_import():
    with pytest.raises(ConfigError, match="names code to import"):
        parse_spec(_spec("os:system"))


def test_a_registered_task_runs_through_a_sweep_with_its_own_options(tmp_path):
    register_task(ScaleTask)
    spec = parse_spec(_spec("scale_lr", scale_lr={"factor": 10.0}))
    assert spec.task_options == ScaleOptions(10.0)
    assert spec.to_dict()["scale_lr"] == {"factor": 10.0}
    with pytest.raises(ConfigError, match=r"^unknown key 'scale_lr.factr' \(did you mean 'scale_lr.factor'\?\)$") as bad:
        parse_spec(_spec("scale_lr", scale_lr={"factr": 1.0}))
    # where it happened is data: the full dotted key, the suggestion, and the section's own error beneath
    assert (bad.value.key, bad.value.unknown, bad.value.suggestion) == ("scale_lr.factr", True, "scale_lr.factor")
    assert bad.value.__cause__.key == "factr"
    with pytest.raises(ConfigError, match="a scale_lr sweep has nothing random to seed"):
        parse_spec(_spec("scale_lr", seeds=[0, 1]))
    with pytest.raises(ConfigError, match="measure: options of task 'measure', but the sweep's task is 'scale_lr'"):
        parse_spec(_spec("scale_lr", measure={"rounds": 2}))
    plan = dry_run(spec, tmp_path / "sw")
    assert plan.backend == "debug" and len(plan.runs) == 2 and plan.totals["gpu_hours"] is None
    out = launch(spec, tmp_path / "sw")
    assert len(out.submitted) == 2
    assert [s.state for s in status(tmp_path / "sw")] == ["done", "done"]
    df = collect(tmp_path / "sw")
    assert sorted(df["scaled"]) == pytest.approx([1e-2, 2e-2])
    assert dry_run(spec, tmp_path / "sw").existing == {r.run_id: "done" for r in plan.runs}


def test_an_entry_point_task_is_found_by_name(tmp_path):
    """A package of the user's, installed with an entry point in group focalexp.tasks (a real
    distribution on sys.path, read by importlib.metadata), runs by its name in a fresh interpreter."""
    pkg = tmp_path / "site"
    (pkg / "mytasks").mkdir(parents=True)
    (pkg / "mytasks" / "__init__.py").write_text(textwrap.dedent('''
        from focalexp.tasks import Task

        class Hello(Task):
            name = "hello"
            seeded = False
            def resolve(self, base, overrides, options, *, check_data_present=True):
                return {"x": overrides.get("x", 0)}
            def run_id(self, config, options):
                return f"{config['x']:012d}"
    '''))
    dist = pkg / "mytasks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mytasks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[focalexp.tasks]\nhello = mytasks:Hello\n")
    code = ("from focalexp.tasks import get_task, task_names; from focalexp.sweep import parse_spec, expand\n"
            "assert 'hello' in task_names(), task_names()\n"
            "spec = parse_spec({'name': 'h', 'task': 'hello', 'grid': {'x': [1, 2]}})\n"
            "print([r.run_id for r in expand(spec)], type(get_task('hello')).__module__)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": f"{pkg}:{Path(__file__).resolve().parents[1]}", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['000000000001', '000000000002'] mytasks"


def test_the_node_rebuilds_the_resolved_config_without_validating_it_again(monkeypatch):
    """expand() resolves each run once; the task rebuilds the plain config on the node as is."""
    import focalexp.train.config as tc

    spec = parse_spec(_spec("train"))
    runs = expand(spec)
    calls = []
    monkeypatch.setattr(tc, "resolve_run_config", lambda *a, **k: calls.append(a))
    task = get_task("train")
    typed = task.from_plain(runs[0].config)
    assert calls == [] and typed.to_dict() == runs[0].config and typed.run_id == runs[0].run_id


def test_every_common_optimizer_name_is_one_of_timms():
    from timm.optim import list_optimizers

    from focalexp.train.config import COMMON_OPTIMIZERS

    assert COMMON_OPTIMIZERS <= set(list_optimizers())
