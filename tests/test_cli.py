"""The `focalexp` command line: models, flops, bad input (exit 2, one line)."""

from __future__ import annotations

import argparse

import json
import subprocess
import sys

import pytest


@pytest.fixture(autouse=True)
def _own_count_cache(tmp_path, monkeypatch):
    """Count for real, in a cache of this test's own (not the user's)."""
    monkeypatch.delenv("FOCALEXP_CACHE_DIR", raising=False)
    monkeypatch.delenv("FOCALEXP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_console_entry_point_runs_as_a_process():
    p = subprocess.run([sys.executable, "-m", "focalexp", "flops", "--model", "focalnet_tiny"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "closest: focalnet_tiny_srf" in p.stderr


def test_flops_json_has_params_and_gmacs(run):
    p = run("flops", "--model", "focalnet_t_srf", "--json")
    d = json.loads(p.stdout)
    assert d["params"] == 28_427_116 and isinstance(d["params"], int)
    assert isinstance(d["gmacs"], float) and abs(d["gmacs"] - 4.421) < 0.01
    assert abs(d["official_gflops"] - 4.413) < 0.001
    assert d["gmacs"] < d["gmacs_elementwise"]
    assert abs(d["flop_counter_gmacs"] - 4.403) < 0.01
    assert set(d["by_stage"]) == {"stem", "stages.0", "stages.1", "stages.2", "stages.3", "norm", "head"}
    assert abs(sum(d["by_stage"].values()) - d["gmacs"]) < 1e-6
    assert d["paper"]["params"] == 28_427_116
    assert {"mul", "gelu", "add", "mean"} <= set(d["not_counted"])
    assert p.stderr == ""


@pytest.mark.slow
def test_flops_text_with_overrides_and_breakdowns(run):
    p = run("flops", "--model", "focalnet_tiny_srf", "--set", "focal_levels=4", "--by", "operator")
    assert "GMACs" in p.stdout and "per operator" in p.stdout and "* gelu" in p.stdout
    p = run("flops", "--model", "focalnet_t_srf", "--img-size", "256", "--by", "module", "--depth", "3")
    assert "stages.2.blocks" in p.stdout and "256x256" in p.stdout


def test_flops_counts_a_timm_baseline(run):
    d = json.loads(run("flops", "--model", "resnet18", "--json").stdout)
    assert abs(d["gmacs"] - 1.82) < 0.02 and d["official_gflops"] is None


def test_models_lists_every_preset_fast(run):
    d = json.loads(run("models", "--fast", "--json").stdout)
    names = {r["name"]: r for r in d}
    assert len(names) >= 30
    assert names["focalnet_t_srf"]["params"] == 28_427_116
    assert names["focalnet_t_srf"]["paper"]["params_m"] == 28.4
    assert names["focalnet_l_fl3"]["timm_weights"] == "focalnet_large_fl3.ms_in22k"


def test_models_table_counts_gmacs_and_says_how_far_it_is(run):
    # the library's compare_presets gives the numbers (tests/test_presets.py checks every preset's):
    # here, that the table shows them and that a run off a terminal prints where it is on stderr
    from focalexp.analysis.presets_table import compare_presets

    p = run("models", "--kind", "toolkit")
    (rec,) = compare_presets("toolkit")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("focalnet_micro "))
    assert f"{rec['params']:,}" in line and f"{rec['gmacs']:.3f}" in line and rec["gmacs"] > 0
    assert "GMACs: fvcore's count, the papers' convention" in p.stdout
    assert p.stderr == "counting 1/1 focalnet_micro\n"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["flops", "--model", "focalnet_tiny"], "unknown model 'focalnet_tiny'; closest: focalnet_tiny_srf"),
        (["flops", "--model", "focalnet_t_srf", "--set", "focal_level=3"], "did you mean 'focal_levels'"),
        (["flops", "--model", "focalnet_t_srf", "--set", "gating=sigmod"], "did you mean 'sigmoid'"),
        (["flops", "--model", "focalnet_t_srf", "--set", "nonsense"], "--set: expected key=value"),
        (["flops", "--model", "focalnet_t_srf", "--img-size", "100"], "--img-size: 100 is not a multiple"),
        (["flops", "--model", "focalnet_t_srf", "--by", "layer"], "invalid choice: 'layer'"),
        (["flops"], "the following arguments are required: --model"),
        (["nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_line(run, args, needle):
    p = run(*args, check_rc=2)
    assert needle in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


def test_every_help_prints_and_exits_0(run):
    """``focalexp --help`` and every command's --help: a command's help line with a "%" once made the
    top-level help a TypeError traceback."""
    from focalexp.cli import build_parser

    top = run("--help", check_rc=0)
    commands = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    assert "95% interval" in " ".join(top.stdout.split()) and len(commands) >= 10
    for name in commands:
        p = run(name, "--help", check_rc=0)
        assert p.stdout.startswith("usage: focalexp " + name) and "Traceback" not in p.stderr, name


def test_help_shows_examples(run):
    p = run("flops", "--help")
    assert "examples:" in p.stdout and "focalexp flops --model focalnet_t_srf" in p.stdout
