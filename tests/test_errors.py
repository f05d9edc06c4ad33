"""Errors carry where they happened as data (key, unknown/suggestion, run, axis); layers add context with
``under``/``in_run`` and nothing rewords a message string on its way up."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

from focalexp.errors import CheckpointError, ConfigError, FocalexpError, UnknownNameError
from focalexp.sweep.spec import expand, parse_spec
from focalexp.train.config import resolve_run_config


def test_rendering_from_fields():
    assert str(ConfigError("plain text")) == "plain text"
    assert str(ConfigError("expected >= 1, got 0", key="depths")) == "depths: expected >= 1, got 0"
    e = ConfigError(key="depht", unknown=True, suggestion="depths", noun="model key")
    assert str(e) == "unknown model key 'depht' (did you mean 'depths'?)"
    assert str(ConfigError("go elsewhere", key="x", unknown=True)) == "unknown key 'x'; go elsewhere"


def test_under_and_in_run_add_context_without_touching_the_original():
    inner = ConfigError(key="depht", unknown=True, suggestion="depths", noun="model key")
    outer = inner.under("model")
    assert str(outer) == "unknown key 'model.depht' (did you mean 'model.depths'?)"
    assert (outer.key, outer.suggestion, outer.__cause__) == ("model.depht", "model.depths", inner)
    assert str(inner) == "unknown model key 'depht' (did you mean 'depths'?)" and inner.key == "depht"
    ran = outer.in_run("lr=0.1, seed=0")
    assert str(ran) == "run [lr=0.1, seed=0]: unknown key 'model.depht' (did you mean 'model.depths'?)"
    assert str(outer.in_run("x", axis="model.depht")).startswith("grid axis 'model.depht': unknown key")
    assert str(UnknownNameError("unknown model 'x'").under("preset").under("model")) == \
        "model.preset: unknown model 'x'"
    assert isinstance(outer, ConfigError) and isinstance(outer, ValueError)


@pytest.mark.parametrize("err", [
    ConfigError("expected >= 1", key="depths").under("model").in_run("a=1, seed=0"),
    UnknownNameError("unknown model 'q'"),
    CheckpointError("bad file"),
    ConfigError(key="k", unknown=True, suggestion="kk"),
])
def test_pickling_keeps_the_fields(err):  # worker processes and submitit pickle exceptions
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert {k: v for k, v in vars(back).items()} == {k: v for k, v in vars(err).items()}


def test_run_config_errors_name_the_dotted_key_as_data():
    with pytest.raises(ConfigError) as bad:
        resolve_run_config({}, {"model.depths": [0]})
    assert bad.value.key == "model.depths" and bad.value.__cause__.key == "depths"
    with pytest.raises(FocalexpError) as bad:
        resolve_run_config({}, {"model.preset": "focalnet_q"})
    assert bad.value.key == "model.preset" and str(bad.value).startswith("model.preset: unknown model 'focalnet_q'")


def test_a_sweep_error_knows_its_run_or_axis():
    base = {"name": "e", "base": {"recipe": "cpu_small"}, "seeds": [0]}
    with pytest.raises(ConfigError) as bad:
        expand(parse_spec({**base, "grid": {"model.depth": [[1, 1, 1]]}}), check_data_present=False)
    assert (bad.value.axis, bad.value.key, bad.value.unknown) == ("model.depth", "model.depth", True)
    with pytest.raises(ConfigError) as bad:
        expand(parse_spec({**base, "grid": {"model.focal_levels": [1, -1]}}), check_data_present=False)
    assert bad.value.axis is None and bad.value.run == "model.focal_levels=-1, seed=0"
    assert bad.value.key == "model.focal_levels"


@pytest.mark.parametrize("old", ["configtools", "overrides"])
def test_the_old_config_modules_are_aliases_that_warn(old):
    code = (f"import warnings; warnings.simplefilter('error');\n"
            f"try:\n import focalexp.{old}\nexcept DeprecationWarning as w: print('warned', w)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"warned focalexp.{old} moved to focalexp.config" in out
    with pytest.warns(DeprecationWarning):
        mod = importlib.reload(importlib.import_module(f"focalexp.{old}"))
    from focalexp import config
    assert mod.parse_yaml is config.parse_yaml and mod.apply_overrides is config.apply_overrides


class _Refuses:
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise ConfigError("'x.png' is not a readable image (truncated)", key="data.root")


def test_an_error_from_a_dataloader_worker_keeps_its_one_line():
    """torch re-raises a worker's exception as ``type(e)(text with the worker's traceback)``; a
    FocalexpError keeps the line the worker raised."""
    from torch.utils.data import DataLoader

    with pytest.raises(ConfigError) as e:
        next(iter(DataLoader(_Refuses(), batch_size=2, num_workers=1)))
    assert str(e.value) == "data.root: 'x.png' is not a readable image (truncated)"
    plain = ConfigError("Caught ValueError in DataLoader worker")  # only torch's whole shape is unwrapped
    assert str(plain) == "Caught ValueError in DataLoader worker"
