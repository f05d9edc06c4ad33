"""analysis/paper_table.py and analysis/complexity_scaling.py: run on a few models, check what they write."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


def _load(name: str):
    """Import a script of analysis/ (not a package) by path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ANALYSIS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _keep_threads():
    """The scripts' --threads sets torch's global thread count: give the rest of the session its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- paper_table
def test_paper_table_matches_the_library(tmp_path, capsys):
    from focalexp.analysis.flops import measure_flops, model_for_counting
    from focalexp.models import get_preset

    pt = _load("paper_table")
    assert pt.main(["--models", "focalnet_t_srf,focalnet_micro", "--out", str(tmp_path), "--threads", "1"]) == 0
    md = (tmp_path / "paper_table.md").read_text()
    assert md.strip() == capsys.readouterr().out.strip()  # printed as written
    rows = _rows(tmp_path / "paper_table.csv")
    assert set(pt.COLUMNS) <= set(rows[0])
    assert [r["model"] for r in rows] == ["focalnet_t_srf", "focalnet_micro"]

    t = rows[0]
    cfg = get_preset("focalnet_t_srf").config
    rep = measure_flops(model_for_counting(cfg), 224, cross_check=False, config=cfg)
    assert int(t["params"]) == rep.params == int(t["ref_params"]) == 28_427_116
    assert float(t["gmacs"]) == pytest.approx(rep.gmacs, rel=1e-6)  # the library's own measurement
    assert float(t["ref_gmacs"]) == 4.421 and float(t["ref_flops_g"]) == 4.413
    assert t["match"] == "exact" and t["differs"] == ""
    assert rows[1]["match"] == "no reference"
    assert "| `focalnet_t_srf` | released | 224 | 1000 | 28,427,116 | 28,427,116 | 0 | 4.421 | 4.421 |" in md
    assert "✓ exact" in md


def test_paper_table_marks_differences_and_fast_mode(tmp_path):
    pt = _load("paper_table")
    assert pt.main(["--models", "focalnet_t_fl1_k13", "--fast", "--out", str(tmp_path), "--quiet"]) == 0
    (r,) = _rows(tmp_path / "paper_table.csv")
    assert r["gmacs"] == ""  # --fast: no fvcore count
    assert r["match"] == "differs" and "printed params (29.02 M vs 28.8 M)" in r["differs"]
    md = (tmp_path / "paper_table.md").read_text()
    assert "✗ differs [1]" in md and "1. **focalnet_t_fl1_k13**" in md


def test_paper_table_throughput_column(tmp_path):
    pt = _load("paper_table")
    args = ["--models", "focalnet_micro", "--fast", "--throughput", "--batch-size", "2", "--rounds", "2",
            "--threads", "1", "--out", str(tmp_path), "--quiet"]
    assert pt.main(args) == 0
    (r,) = _rows(tmp_path / "paper_table.csv")
    assert float(r["img_s"]) > 0 and float(r["img_s_min"]) <= float(r["img_s"]) <= float(r["img_s_max"])
    assert "img/s" in (tmp_path / "paper_table.md").read_text()


def test_paper_table_rejects_unknown_models(tmp_path):
    pt = _load("paper_table")
    with pytest.raises(SystemExit) as e:
        pt.main(["--models", "focalnet_nope", "--out", str(tmp_path)])
    assert e.value.code == 2


# ---------------------------------------------------------------------------- complexity_scaling
def test_complexity_scaling_outputs(tmp_path):
    import matplotlib.image as mpimg

    cs = _load("complexity_scaling")
    args = ["--models", "focal_srf,global_focalnet", "--resolutions", "128,224", "--threads", "1",
            "--fvcore-max-res-global", "128", "--out", str(tmp_path)]
    assert cs.main(args) == 0
    rows = _rows(tmp_path / "complexity_scaling.csv")
    by = {(r["model"], int(r["resolution"])): r for r in rows}
    assert set(by) == {(m, r) for m in ("focal_srf", "global_focalnet") for r in (128, 224)}
    # fvcore where it ran, the meta count above --fvcore-max-res-global; equal wherever both exist
    assert by["focal_srf", 224]["gmacs_source"] == "fvcore"
    assert by["global_focalnet", 224]["gmacs_source"] == "meta count"
    assert float(by["focal_srf", 224]["gmacs"]) == pytest.approx(4.4206464, rel=1e-6)  # = focalexp flops
    for r in rows:
        if r["gmacs_fvcore"]:
            assert float(r["gmacs_fvcore"]) == pytest.approx(float(r["gmacs_meta"]), rel=1e-6)

    def growth(model, q):
        return float(by[model, 224][q]) / float(by[model, 128][q])

    for q in ("gmacs", "activation_bytes"):
        assert growth("focal_srf", q) > 1 and growth("global_focalnet", q) > 1
        assert growth("global_focalnet", q) > growth("focal_srf", q) * 1.3  # quadratic vs linear in pixels
    assert growth("focal_srf", "gmacs") == pytest.approx((224 / 128) ** 2, rel=0.02)

    slopes = {r["model"]: r for r in _rows(tmp_path / "complexity_scaling_slopes.csv")}
    assert float(slopes["focal_srf"]["gmacs_slope_fit"]) == pytest.approx(2.0, abs=0.05)
    assert float(slopes["global_focalnet"]["gmacs_slope_fit"]) > 2.5

    png = tmp_path / "complexity_scaling.png"
    assert png.stat().st_size > 10_000 and (tmp_path / "complexity_scaling.pdf").stat().st_size > 1_000
    img = mpimg.imread(png)
    assert img.shape[0] > 500 and img.shape[1] > 1000
    assert img[..., :3].std() > 0.05  # not blank


def test_activation_count_on_meta_equals_a_real_forward():
    """The meta-device count is byte for byte what a real CPU forward saves (attention materialised)."""
    cs = _load("complexity_scaling")
    torch.set_num_threads(1)
    for key in ("focal_srf", "window_focalnet", "deit_s"):
        e = cs.MODELS[key]
        meta = cs.saved_activation_bytes(cs.build(e, 64, "meta"), 64, "meta")
        real = cs.saved_activation_bytes(cs.build(e, 64, "cpu"), 64, "cpu")
        assert meta == real and meta[0] > 0, key


def test_complexity_scaling_rejects_bad_resolutions(tmp_path):
    cs = _load("complexity_scaling")
    with pytest.raises(SystemExit):
        cs.main(["--resolutions", "224,300", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cs.main(["--models", "focal_srf,nope", "--out", str(tmp_path)])


def test_sweep_scale_benchmark_runs_and_its_sweep_dir_is_what_status_reads(capsys, tmp_path):
    """The scale benchmark's synthetic sweep dir must read as 1,000 finished runs (the script asserts it)."""
    mod = _load("sweep_scale")
    assert mod.main(["--only", "status"]) == 0
    out = capsys.readouterr().out
    assert "status of 1,000 finished runs" in out and "collect 1,000 finished runs" in out
    spec = mod.grid_spec()
    from focalexp.sweep.spec import count_runs, parse_spec

    assert count_runs(parse_spec(spec)) == (1200, True)


def test_timm_contract_counts_a_junit_report_per_preset(tmp_path):
    """analysis/timm_contract.py: test ids of timm's file (focalexp_<preset>-batch) and of ours (param-preset)."""
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite>'
        '<testcase name="test_model_forward[1-focalexp_focalnet_t_srf]"/>'
        '<testcase name="test_model_forward[1-focalexp_focalnet_t_srf_overlap]"><failure/></testcase>'
        '<testcase name="test_model_backward[2-focalexp_focalnet_t_srf]"><skipped/></testcase>'
        '<testcase name="test_features_only[fx-focalnet_t_iso]"><error/></testcase>'
        '<testcase name="test_capture_pads_inputs_like_eager"/>'
        '</testsuite></testsuites>'
    )
    counts = _load("timm_contract").count(report, ["focalnet_t_srf", "focalnet_t_iso"])
    assert dict(counts["focalnet_t_srf"]) == {"passed": ["test_model_forward"], "skipped": ["test_model_backward"]}
    assert dict(counts["focalnet_t_iso"]) == {"failed": ["test_features_only"]}
