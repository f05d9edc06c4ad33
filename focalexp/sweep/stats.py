"""Statistics over seeds: per-arm means with 95% intervals, paired differences against a baseline arm,
and how many seeds a difference needs.

An *arm* is one grid point (every axis fixed); its runs differ only by seed. Two arms are compared by
pairing their runs that share a seed (same data order, same initialisation stream), which removes the
seed-to-seed variation the two have in common: the paired difference ``d_i = arm_i - baseline_i`` gets a
95% interval (``t``: ``mean ± t_{0.975, n-1} · sd/√n``; ``bootstrap``: percentile interval of 10,000
resampled means, a fixed generator so reports are reproducible), the paired t-test p-value (as
``scipy.stats.ttest_rel``), and the number of seeds a paired t-test would need to detect the observed
mean difference with 80% power at α = 0.05 (two-sided; noncentral t, solved for n).

``baseline`` is a mapping of axis -> value. The axes it names pick the baseline arm; the arms are
compared within *strata* of the axis units it does not touch (a grid key is one unit, a ``zip`` group is
one unit): with a grid of preset x ``use_conv_embed`` and ``baseline: {model.use_conv_embed: false}``
every preset is compared with its own non-overlapped arm.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

METHODS = ("t", "bootstrap")
LEVEL = 0.95
POWER = 0.8
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000
MAX_SEEDS = 100_000  # seeds_for_power gives up above this


def method_label(method: str) -> str:
    """How a report names the interval method."""
    return {"t": "t-interval over seeds (scipy.stats.t)",
            "bootstrap": f"percentile bootstrap over seeds ({BOOTSTRAP_RESAMPLES:,} resamples, fixed generator)"}[method]


def _check_method(method: str) -> None:
    if method not in METHODS:
        from ..errors import ConfigError
        from ..errors import did_you_mean

        raise ConfigError(f"unknown interval method {method!r}{did_you_mean(method, METHODS)}; "
                          f"allowed: {', '.join(METHODS)}", key="ci")


def interval(values: Iterable[float], method: str = "t", level: float = LEVEL, seed: int = 0) -> tuple[float, float]:
    """The ``level`` interval of the mean of ``values``; ``(nan, nan)`` with fewer than two values."""
    _check_method(method)
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(x)
    if n < 2:
        return math.nan, math.nan
    mean = float(x.mean())
    if method == "t":
        from scipy import stats

        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
        return mean - half, mean + half
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def seeds_for_power(mean_diff: float, sd_diff: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """Smallest n (pairs, i.e. seeds) at which a two-sided paired t-test at ``alpha`` detects a true mean
    difference ``mean_diff`` with paired-difference sd ``sd_diff`` with probability ``power``:
    ``P(|T| > t_{1-α/2, n-1})`` with ``T ~ nct(n-1, (mean_diff/sd_diff)·√n)``. ``inf`` when the difference
    is 0 (or more than :data:`MAX_SEEDS` are needed), 2 (the fewest a t-test takes) when the differences do
    not vary, ``nan`` when unknown."""
    from scipy import stats

    if any(v is None or math.isnan(v) for v in (mean_diff, sd_diff)) or sd_diff < 0:
        return math.nan
    if mean_diff == 0:
        return math.inf
    if sd_diff == 0:
        return 2.0
    dz = abs(mean_diff) / sd_diff

    def pw(n: int) -> float:
        df = n - 1
        crit = stats.t.ppf(1 - alpha / 2, df)
        nc = dz * math.sqrt(n)
        return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))

    if pw(MAX_SEEDS) < power:
        return math.inf
    lo, hi = 2, 2
    while pw(hi) < power:  # power grows with n: double, then bisect
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if pw(mid) >= power:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


def _done(df, metric: str):
    d = df[(df["status"] == "done")] if "status" in df.columns else df
    return d[d[metric].notna()] if metric in d.columns else d.iloc[0:0]


def arm_stats(df, metric: str, axes: Sequence[str] | None = None, method: str = "t"):
    """One row per arm (in the order the arms first appear): the axes, ``n`` (seeds with a value),
    ``mean``, ``sd`` and the 95% interval ``lo``/``hi`` of ``metric`` over seeds (done runs only; NaN
    interval with one seed)."""
    import pandas as pd

    _check_method(method)
    axes = list(axes if axes is not None else [a for a in df.attrs.get("axes", []) if a in df.columns])
    d = _done(df, metric)
    rows = []
    groups = d.groupby(axes, sort=False, dropna=False) if axes else [((), d)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        x = g[metric].astype(float).to_numpy()
        lo, hi = interval(x, method)
        rows.append({**dict(zip(axes, key)), "n": len(x), "mean": float(x.mean()),
                     "sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan, "lo": lo, "hi": hi})
    out = pd.DataFrame(rows, columns=[*axes, "n", "mean", "sd", "lo", "hi"])
    out.attrs.update(metric=metric, method=method, axes=axes)
    return out


def matches(arm: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    """Whether ``arm`` (axis -> value) has every value that ``rule`` names."""
    return all(k in arm and _same(arm[k], v) for k, v in rule.items())


def _same(a: Any, b: Any) -> bool:
    from .collect import axis_cell

    a, b = axis_cell(a), axis_cell(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def baseline_arms(arms: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any],
                  units: Sequence[Sequence[str]] | None = None) -> list[int | None]:
    """For each arm, the index of its baseline arm: the arm that matches ``baseline`` and agrees with it on
    every axis unit that ``baseline`` does not touch (None when there is none). ``units``: groups of
    axes that vary together (each grid key alone, each ``zip`` group); default: every axis alone. Raises
    ValueError when a stratum holds more than one arm matching ``baseline``."""
    if not arms:
        return []
    axes = list(arms[0])
    units = [list(u) for u in units] if units else [[a] for a in axes]
    free = [a for u in units if set(u) & set(baseline) for a in u]
    strata = [a for a in axes if a not in free]
    by_stratum: dict[tuple, int] = {}
    for i, arm in enumerate(arms):
        if matches(arm, baseline):
            s = tuple(str(arm[a]) for a in strata)
            if s in by_stratum:
                other = arms[by_stratum[s]]
                raise ValueError(f"matches more than one arm ({_label(other)}; {_label(arm)}); name more axes "
                                 "to pick one")
            by_stratum[s] = i
    return [by_stratum.get(tuple(str(arm[a]) for a in strata)) for arm in arms]


def _label(arm: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in arm.items())


def paired_vs_baseline(df, metric: str, baseline: Mapping[str, Any], axes: Sequence[str] | None = None,
                       units: Sequence[Sequence[str]] | None = None, method: str = "t"):
    """One row per arm: the axes, ``baseline`` (the index of its baseline arm in :func:`arm_stats`' rows,
    or None), ``is_baseline``, ``n_pairs`` (seeds both arms finished), ``delta`` (mean paired difference
    arm - baseline), ``sd`` of the differences, ``lo``/``hi`` (95% interval), ``p`` (paired t-test),
    ``distinguishable`` (the interval excludes 0) and ``seeds_needed`` (80% power, see
    :func:`seeds_for_power`). With one pair: the difference and NaN for the rest."""
    import pandas as pd
    from scipy import stats

    _check_method(method)
    arms_df = arm_stats(df, metric, axes, method)
    axes = arms_df.attrs["axes"]
    arms = [dict(zip(axes, r)) for r in arms_df[axes].itertuples(index=False, name=None)]
    base_idx = baseline_arms(arms, baseline, units)
    d = _done(df, metric)
    per_arm = {}
    for key, g in (d.groupby(axes, sort=False, dropna=False) if axes else [((), d)]):
        key = key if isinstance(key, tuple) else (key,)
        per_arm[tuple(str(k) for k in key)] = g.groupby("seed")[metric].mean()
    rows = []
    for i, arm in enumerate(arms):
        b = base_idx[i]
        row: dict[str, Any] = {**arm, "baseline": b, "is_baseline": b == i, "n_pairs": 0, "delta": math.nan,
                               "sd": math.nan, "lo": math.nan, "hi": math.nan, "p": math.nan,
                               "distinguishable": False, "seeds_needed": math.nan}
        if b is not None and b != i:
            x = per_arm[tuple(str(arm[a]) for a in axes)]
            y = per_arm[tuple(str(arms[b][a]) for a in axes)]
            seeds = x.index.intersection(y.index)
            diff = (x.loc[seeds] - y.loc[seeds]).to_numpy(dtype=float)
            row["n_pairs"] = len(diff)
            if len(diff):
                row["delta"] = float(diff.mean())
            if len(diff) > 1:
                row["sd"] = float(diff.std(ddof=1))
                row["lo"], row["hi"] = interval(diff, method)
                if row["sd"] > 0:
                    row["p"] = float(stats.ttest_rel(x.loc[seeds], y.loc[seeds]).pvalue)
                else:  # identical differences: the t statistic is infinite (or undefined for 0)
                    row["p"] = 0.0 if row["delta"] != 0 else 1.0
                row["distinguishable"] = bool(row["lo"] > 0 or row["hi"] < 0)
                row["seeds_needed"] = seeds_for_power(row["delta"], row["sd"])
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs.update(metric=metric, method=method, axes=axes, baseline=dict(baseline))
    return out
