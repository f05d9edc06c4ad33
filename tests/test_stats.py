"""Statistics over seeds (focalexp.sweep.stats) on synthetic data with known answers, the spec's
``report:`` / ``paper:`` sections, and `focalexp report` on a synthetic multi-seed sweep dir."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from focalexp.errors import ConfigError
from focalexp.sweep import parse_spec
from focalexp.sweep.stats import arm_stats, baseline_arms, interval, paired_vs_baseline, seeds_for_power

from .conftest import invoke

REPO = Path(__file__).resolve().parents[1]


def frame(rows: list[dict], axes: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["status"] = df.get("status", "done")
    df.attrs["axes"] = axes
    return df


def levels_frame(values: dict[int, list[float]]) -> pd.DataFrame:
    """focal_levels -> top-1 per seed (seed = position)."""
    return frame([{"model.focal_levels": lv, "seed": s, "top1": v, "status": "done"}
                  for lv, vs in values.items() for s, v in enumerate(vs)], ["model.focal_levels"])


# ------------------------------------------------------------------ intervals, tests, power
def test_t_interval_by_hand():
    # mean 3, sd sqrt(2.5), t_{0.975,4} = 2.7764451: half-width 2.7764451 * 1.5811388 / sqrt(5) = 1.9632432
    lo, hi = interval([1, 2, 3, 4, 5])
    assert lo == pytest.approx(3 - 1.9632432, abs=1e-6) and hi == pytest.approx(3 + 1.9632432, abs=1e-6)
    assert all(math.isnan(v) for v in interval([4.0]))


def test_bootstrap_interval_is_reproducible_and_close_to_t_for_normal_data():
    x = np.random.default_rng(1).normal(80, 1, 40)
    b = interval(x, "bootstrap")
    assert b == interval(x, "bootstrap")  # a fixed generator
    t = interval(x, "t")
    assert b[0] == pytest.approx(t[0], abs=0.15) and b[1] == pytest.approx(t[1], abs=0.15)
    with pytest.raises(ConfigError, match="did you mean 'bootstrap'"):
        interval(x, "bootstrp")


@pytest.mark.parametrize("dz, n", [(0.2, 199), (0.5, 34), (0.8, 15), (1.0, 10)])  # G*Power, paired t, 80%, α .05
def test_seeds_for_power_matches_published_sample_sizes(dz, n):
    assert seeds_for_power(dz * 2.0, 2.0) == n


def test_seeds_for_power_edges():
    assert seeds_for_power(0.0, 1.0) == math.inf
    assert seeds_for_power(1.0, 0.0) == 2 and seeds_for_power(0.0, 0.0) == math.inf
    assert math.isnan(seeds_for_power(math.nan, 1.0))


def test_arm_stats_mean_sd_interval_per_arm():
    df = levels_frame({0: [70.0, 72.0, 71.0], 2: [80.0, 81.0, 82.5]})
    a = arm_stats(df, "top1")
    assert list(a["model.focal_levels"]) == [0, 2] and list(a["n"]) == [3, 3]
    assert a["mean"].tolist() == pytest.approx([71.0, 81.1666667])
    ref = sps.t.interval(0.95, 2, loc=81.1666667, scale=sps.sem([80.0, 81.0, 82.5]))
    assert (a.loc[1, "lo"], a.loc[1, "hi"]) == pytest.approx(ref)


def test_paired_difference_matches_ttest_rel_and_pairs_by_seed():
    base = [80.0, 81.0, 82.5, 79.0]
    arm = [81.0, 81.5, 84.0, 79.9]
    # shuffle the rows: pairing is by seed, not by row order
    df = levels_frame({2: base, 3: arm}).sample(frac=1.0, random_state=0)
    df.attrs["axes"] = ["model.focal_levels"]
    p = paired_vs_baseline(df, "top1", {"model.focal_levels": 2}).set_index("model.focal_levels")
    ref = sps.ttest_rel(arm, base)
    d = np.subtract(arm, base)
    assert p.loc[3, "delta"] == pytest.approx(d.mean()) and p.loc[3, "p"] == pytest.approx(ref.pvalue)
    lo, hi = sps.t.interval(0.95, 3, loc=d.mean(), scale=sps.sem(d))
    assert (p.loc[3, "lo"], p.loc[3, "hi"]) == pytest.approx((lo, hi))
    assert p.loc[3, "distinguishable"] == (lo > 0)
    assert p.loc[3, "seeds_needed"] == seeds_for_power(d.mean(), d.std(ddof=1))
    assert bool(p.loc[2, "is_baseline"]) and math.isnan(p.loc[2, "delta"])


def test_unpaired_seeds_are_left_out_and_one_pair_gives_no_interval():
    df = levels_frame({2: [80.0, 81.0], 3: [82.0]})  # arm 3 has only seed 0
    p = paired_vs_baseline(df, "top1", {"model.focal_levels": 2}).set_index("model.focal_levels")
    assert p.loc[3, "n_pairs"] == 1 and p.loc[3, "delta"] == 2.0
    assert math.isnan(p.loc[3, "lo"]) and math.isnan(p.loc[3, "p"]) and not p.loc[3, "distinguishable"]


def test_baseline_is_per_stratum_of_the_axes_it_leaves_out():
    arms = [{"model.preset": p, "model.use_conv_embed": c} for p in ("t", "s") for c in (False, True)]
    assert baseline_arms(arms, {"model.use_conv_embed": False}) == [0, 0, 2, 2]
    # a zip group is one unit: naming one of its keys frees all of them
    zipped = [{"m": "fm", "L": 3}, {"m": "dw", "L": 3}, {"m": "fm", "L": 0}]
    assert baseline_arms(zipped, {"m": "fm", "L": 3}, units=[["m", "L"]]) == [0, 0, 0]
    with pytest.raises(ValueError, match="more than one arm"):
        baseline_arms(zipped, {"m": "fm"}, units=[["m", "L"]])


# ------------------------------------------------------------------ spec sections
def tiny_spec(**over) -> dict:
    from .conftest import tiny_run

    base = tiny_run()
    base.pop("seed")
    spec = {"name": "tiny", "base": base, "grid": {"model.focal_levels": [0, 1, 2]}, "seeds": [0, 1, 2],
            "launcher": {"cluster": "local", "cpus_per_task": 1}}
    spec.update(over)
    return spec


PAPER = {"source": "Yang et al. 2022, Table 14", "metric": "top1",
         "values": [{"match": {"model.focal_levels": 0}, "value": 75.7},
                    {"match": {"model.focal_levels": 1}, "value": 82.0},
                    {"match": {"model.focal_levels": 2}, "value": 82.1}]}


@pytest.mark.parametrize("over, message", [
    ({"report": {"baseline": {"model.focal_level": 2}}},
     "report.baseline.model.focal_level: not an axis of the sweep (did you mean 'model.focal_levels'?)"),
    ({"report": {"baseline": {"model.focal_levels": 7}}}, "report.baseline.model.focal_levels: 7 is not a value"),
    ({"report": {"baseline": 2}}, "report.baseline: expected a mapping"),
    ({"report": {"basline": {}}}, "unknown key 'report.basline' (did you mean 'report.baseline'?)"),
    ({"paper": {**PAPER, "metric": "top_1"}}, "paper.metric: unknown value 'top_1' (did you mean 'top1'?)"),
    ({"paper": {**PAPER, "source": ""}}, "paper.source:"),
    ({"paper": PAPER, "report": {"metric": "top5"}}, "report.metric: 'top5', but paper.metric is 'top1'"),
    ({"paper": {**PAPER, "values": [{"match": {"model.focal_levels": 9}, "value": 1.0}]}},
     "paper.values[0].match.model.focal_levels: 9 is not a value"),
    ({"paper": {**PAPER, "values": [{"match": {"model.focal_levels": 1}, "valeu": 1.0}]}},
     "unknown key 'paper.values[0].valeu' (did you mean 'paper.values[0].value'?)"),
    ({"paper": {**PAPER, "values": PAPER["values"] + [{"match": {"model.focal_levels": 2}, "value": 1.0}]}},
     "paper.values[3].match: the arm model.focal_levels=2 already has paper.values[2]"),
    ({"paper": {**PAPER, "values": [{"match": {"model.focal_levels": 1}, "value": "high"}]}},
     "paper.values[0].value: expected a number"),
    ({"zip": [{"model.focal_levels": [1, 2], "model.kernel_sizes": [[3], [3, 5]]}], "grid": {},
      "paper": {**PAPER, "values": [{"match": {"model.focal_levels": 1, "model.kernel_sizes": [3, 5]}, "value": 1.0}]}},
     "paper.values[0].match: matches no arm"),
])
def test_report_and_paper_sections_are_strict(over, message):
    with pytest.raises(ConfigError) as e:
        parse_spec(tiny_spec(**over))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_narrowing_the_grid_with_set_drops_paper_values_instead_of_failing():
    s = parse_spec(tiny_spec(paper=PAPER, report={"baseline": {"model.focal_levels": 2}}),
                   {"grid.model.focal_levels": [0, 1]})
    assert s.paper.values[2].value == 82.1 and s.to_dict()["report"]["baseline"] == {"model.focal_levels": 2}


# ------------------------------------------------------------------ the report of a synthetic sweep dir
def synthetic_sweep(path: Path, top1: dict[int, list[float]], **over) -> Path:
    """A sweep dir as `focalexp sweep` leaves it (manifest, spec.yaml, run dirs), with result.json files
    holding the given top-1 per focal level and seed (None: the run failed)."""
    from focalexp.sweep import SweepDir, expand

    levels = list(top1)
    seeds = list(range(max(len(v) for v in top1.values())))
    spec = parse_spec(tiny_spec(grid={"model.focal_levels": levels}, seeds=seeds, **over))
    runs = expand(spec)
    sweep = SweepDir(path)
    sweep.write_manifest(spec, runs, "local")
    for r in runs:
        v = top1[r.axes["model.focal_levels"]][r.seed]
        res = ({"status": "done", "top1": v, "params": 500_000 + 1000 * r.axes["model.focal_levels"],
                "gmacs": 0.014 + 0.001 * r.axes["model.focal_levels"]} if v is not None
               else {"status": "failed", "reason": "diverged"})
        (sweep.run_dir(r.run_id) / "result.json").write_text(json.dumps(res))
    return path


def cells_of(md: str) -> list[list[str]]:
    """The rows of the markdown tables in ``md`` as lists of stripped cells."""
    return [[c.strip() for c in line.strip()[1:-1].split("|")] for line in md.splitlines() if line.startswith("|")]


THREE_SEEDS = {0: [70.0, 72.0, 71.0], 1: [80.5, 81.0, 83.0], 2: [80.0, 81.0, 82.5]}


def test_report_of_three_seeds_with_paper_and_baseline(tmp_path):
    sw = synthetic_sweep(tmp_path / "sw", THREE_SEEDS, paper=PAPER, report={"baseline": {"model.focal_levels": 2}})
    r = invoke("report", str(sw))
    assert r.returncode == 0, r.stderr
    md = (sw / "report" / "report.md").read_text()
    assert md.strip() in r.stdout
    assert "t-interval over seeds (scipy.stats.t)" in md
    lo, hi = sps.t.interval(0.95, 2, loc=71.0, scale=sps.sem([70.0, 72.0, 71.0]))
    assert ["0", "71.00", f"[{lo:.2f}, {hi:.2f}]", "0.50", "0.0140", "3"] in cells_of(md)
    d = np.subtract(THREE_SEEDS[0], THREE_SEEDS[2])
    p = sps.ttest_rel(THREE_SEEDS[0], THREE_SEEDS[2]).pvalue
    dlo, dhi = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
    assert ["0", "75.70", "-6.40", "71.00", f"{d.mean():+.2f}", f"[{dlo:+.2f}, {dhi:+.2f}]",
                     f"{p:.3f}", "yes", str(int(seeds_for_power(d.mean(), d.std(ddof=1)))), "yes"] in cells_of(md)
    # level 1: the paper has -0.1, ours is +0.33 [-0.38, +1.05]: the direction disagrees, not distinguishably
    assert ["1", "82.00", "-0.10", "81.50", "+0.33", "[-0.38, +1.05]", "0.184", "no", "9", "no"] in cells_of(md)
    assert ["2", "82.10", "baseline", "81.17", "baseline", "", "", "", "", ""] in cells_of(md)
    assert "Direction agrees with the paper for 1 of 2 arms (1 of them distinguishable at these seeds)." in md
    assert "paper: Yang et al. 2022, Table 14, top-1 (%); 3 of 3 arms" in md
    tex = (sw / "report" / "report.tex").read_text()
    assert tex.count(r"\toprule") == 2 and r"paper $\Delta$" in tex and r"95\% CI" in tex
    for f in ("top1_vs_model_focal_levels.png", "top1_vs_gmacs.png", "top1_delta_vs_baseline.png"):
        from PIL import Image

        img = np.asarray(Image.open(sw / "report" / f).convert("L"), dtype=float)
        assert img.std() > 10, f


def test_report_bootstrap_and_baseline_from_the_command_line(tmp_path):
    sw = synthetic_sweep(tmp_path / "sw", THREE_SEEDS)
    r = invoke("report", str(sw), "--ci", "bootstrap", "--baseline", "model.focal_levels=0")
    assert r.returncode == 0, r.stderr
    assert "percentile bootstrap over seeds" in r.stdout and "Δ = arm − baseline (model.focal_levels=0)" in r.stdout
    assert "paper" not in r.stdout.split("##", 1)[1]
    bad = invoke("report", str(sw), "--baseline", "model.focal_level=0")
    assert bad.returncode == 2 and "--baseline" in bad.stderr and "did you mean 'model.focal_levels'" in bad.stderr
    bad = invoke("report", str(sw), "--baseline", "model.focal_levels=5")
    assert bad.returncode == 2 and "matches no arm of the sweep; values: model.focal_levels: 0, 1, 2" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_one_seed_says_so_in_one_line_and_prints_no_nan(tmp_path):
    sw = synthetic_sweep(tmp_path / "sw", {0: [70.0], 1: [80.0], 2: [None]}, paper=PAPER,
                         report={"baseline": {"model.focal_levels": 1}})
    r = invoke("report", str(sw))
    assert r.returncode == 0, r.stderr
    assert "1 of 3 runs" not in r.stdout and "2 of 3 runs done" in r.stdout
    assert r.stdout.count("One seed per arm: no intervals") == 1
    assert "nan" not in r.stdout.lower() and "95% CI" not in r.stdout
    assert ["0", "75.70", "-6.30", "70.00", "-10.00", "yes"] in cells_of(r.stdout)


def test_report_without_spec_sections_still_reports(tmp_path):
    sw = synthetic_sweep(tmp_path / "sw", THREE_SEEDS)
    (sw / "spec.yaml").unlink()  # a sweep dir from before the report sections
    r = invoke("report", str(sw))
    assert r.returncode == 0 and "##" not in r.stdout
    assert cells_of(r.stdout)[0] == ["model.focal_levels", "top-1 (%)", "95% CI", "params (M)", "GMACs", "seeds"]


# questions the paper has no numbers for (focal levels on detection): their specs say so and have no paper column
NO_PAPER = ("detection_focal_levels.yaml", "coco/mask_rcnn_focal_levels.yaml")
SHIPPED = sorted(str(p.relative_to(REPO / "experiments")) for p in (REPO / "experiments").rglob("*.yaml")
                 if str(p.relative_to(REPO / "experiments")) not in NO_PAPER)


@pytest.mark.parametrize("name", NO_PAPER)
def test_specs_without_the_papers_numbers_say_why(name):
    from focalexp.sweep import load_spec

    spec = load_spec(REPO / "experiments" / name)
    assert spec.paper is None and spec.report.baseline
    assert "paper" in (REPO / "experiments" / name).read_text().split("name:")[0]  # the header says why


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_spec_has_the_papers_numbers_and_a_report_that_checks_them(name, tmp_path):
    """A sweep of each shipped spec whose runs scored exactly the paper's numbers (three seeds, the same
    seed noise in every arm): every arm with a published number gets it beside ours, and wherever the
    paper's Δ is not 0 our direction agrees."""
    from focalexp.sweep import SweepDir, expand, load_spec
    from focalexp.sweep.stats import matches

    spec = load_spec(REPO / "experiments" / name, {"seeds": [0, 1, 2]})
    assert spec.paper is not None and spec.paper.source.startswith("Yang et al. 2022, Table ")
    assert spec.report.baseline
    runs = expand(spec, check_data_present=False)
    sweep = SweepDir(tmp_path / "sw")
    sweep.write_manifest(spec, runs, "local")
    noise = [0.0, 0.3, -0.2]
    for r in runs:
        v = next((pv.value for pv in spec.paper.values if matches(r.axes, pv.match)), 50.0)
        (sweep.run_dir(r.run_id) / "result.json").write_text(json.dumps({"status": "done",
                                                                        spec.paper.metric: v + noise[r.seed]}))
    files = invoke("report", str(sweep.path), "--fig-format", "svg") if name == "focal_levels.yaml" else None
    from focalexp.sweep import report

    md = report(sweep.path, formats=()) and (sweep.path / "report" / "report.md").read_text()
    arms = len({tuple(map(str, r.axes.values())) for r in runs})
    assert f"{len(spec.paper.values)} of {arms} arms have a published number" in md
    with_delta = [pv for pv in spec.paper.values if not matches(pv.match, spec.report.baseline)]
    agree = md.split("Direction agrees with the paper for ")[1].split(" arms")[0]
    k, n = agree.split(" of ")
    assert k == n and int(n) >= 1 and int(n) <= len(with_delta)
    assert not any(row[-1] == "no" for row in cells_of(md)) and "nan" not in md.lower()  # direction column
    if files is not None:
        assert files.returncode == 0 and (sweep.path / "report" / "top1_delta_vs_baseline.svg").exists()


def test_build_tables_notes_a_missing_baseline_and_a_paper_of_another_metric():
    from focalexp.sweep.spec import PaperResults, PaperValue
    from focalexp.sweep.reporting import build_tables

    df = levels_frame({0: [70.0, 71.0], 1: [80.0, 81.0], 2: [None, None]})
    df.loc[df["top1"].isna(), "status"] = "failed"
    df["images_per_s"] = 100.0
    df.attrs["name"] = "t"
    t = build_tables(df, baseline={"model.focal_levels": 2})
    assert "The baseline (model.focal_levels=2) has no finished run: no differences." in t.comparison_notes
    assert t.paired["delta"].isna().all() and list(t.comparison["ours Δ"]) == ["—", "—"]
    paper = PaperResults(source="Table 14", metric="top1", values=[PaperValue({"model.focal_levels": 0}, 75.7)])
    t = build_tables(df, metric="images_per_s", paper=paper)
    assert any("are of top-1 (%), not images/s: not shown" in n for n in t.notes) and t.comparison is None
