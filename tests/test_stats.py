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
    assert math.isnan(seeds_for_power(1.0, 0.0))


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
