"""The paper-style report of a sweep: tables (markdown and LaTeX, built as pandas DataFrames) and
seaborn figures, with 95% intervals over seeds, paired differences against a baseline arm and the
paper's published numbers beside ours.

What it compares comes from the sweep's ``spec.yaml`` (``report: {baseline, metric}`` and ``paper:``,
see :mod:`focalexp.sweep.spec`) unless the caller overrides it; the statistics are
:mod:`focalexp.sweep.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..config import build, load_yaml
from ..errors import ConfigError, did_you_mean
from . import stats
from .collect import METRICS, collect
from .collect import axis_cell as collect_cell
from .spec import PaperResults, ReportOptions
from .store import SweepDir

_SCALE = {"params": 1e-6}
ACCURACY_METRICS = ("top1", "box_ap")  # what a run of a task scores, in order: a report compares the first found
_NO_SPREAD = ("params", "gmacs", "gmacs_elementwise", "epochs_done")  # the same for every seed
DASH = "—"


@dataclass
class ReportTables:
    """What the report says, as data: ``arms`` (one row per arm, display strings), ``comparison`` (vs the
    baseline and the paper; None without either), ``notes`` (lines under the title), and the numbers
    behind them (``arm_numbers``: :func:`stats.arm_stats`; ``paired``: :func:`stats.paired_vs_baseline`)."""

    title: str
    metric: Optional[str] = None
    method: str = "t"
    axes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    arms: Any = None
    comparison: Any = None
    comparison_notes: list[str] = field(default_factory=list)
    arm_numbers: Any = None
    paired: Any = None
    paper_deltas: dict[int, float] = field(default_factory=dict)


def spec_sections(sweep: SweepDir) -> tuple[ReportOptions, Optional[PaperResults], list[list[str]]]:
    """The ``report`` and ``paper`` sections of the sweep's recorded spec and its axis units (each grid key
    alone, each zip group together); defaults when the sweep dir has no spec.yaml (older sweeps)."""
    path = sweep.path / "spec.yaml"
    raw = load_yaml(path, "spec") if path.is_file() else None
    raw = raw if isinstance(raw, Mapping) else {}
    try:
        options = build(ReportOptions, raw.get("report") or {}, "report")
        paper = build(PaperResults, raw["paper"], "paper") if raw.get("paper") else None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    units = [[k] for k in (raw.get("grid") or {})]
    units += [list(g) for g in (raw.get("zip") or []) if isinstance(g, Mapping)]
    return options, paper, units


def parse_baseline(items: list[str] | None) -> dict[str, Any]:
    """``--baseline KEY=VALUE`` (repeatable) -> axis -> value."""
    from ..config import parse_set_args

    try:
        return parse_set_args(items)
    except ConfigError as e:
        raise ConfigError(str(e).replace("--set", "--baseline")) from None


def _check_baseline(baseline: Mapping[str, Any], arms: list[dict[str, Any]], axes: list[str], key: str) -> None:
    for k in baseline:
        if k not in axes:
            raise ConfigError(f"{k!r} is not an axis of the sweep{did_you_mean(k, axes)}; axes: {', '.join(axes)}",
                              key=key)
    if arms and not any(stats.matches(a, baseline) for a in arms):
        shown = ", ".join(f"{k}={v}" for k, v in baseline.items())
        values = {k: list(dict.fromkeys(str(collect_cell(a.get(k))) for a in arms)) for k in baseline}
        raise ConfigError(f"{shown} matches no arm of the sweep; values: " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in values.items()), key=key)


def _digits(metric: str, value: float) -> int:
    if metric == "epochs_done":
        return 0
    if "gmacs" in metric and abs(value) < 1:
        return 4
    return 2 if metric == "params" or abs(value) < 100 else 1


def _num(value: float, metric: str, digits: int | None = None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    value = value * _SCALE.get(metric, 1.0)
    d = _digits(metric, value) if digits is None else digits
    return f"{value:+.{d}f}" if signed else f"{value:.{d}f}"


def _mean_sd(mean: float, sd: float, n: int, metric: str) -> str:
    text = _num(mean, metric)
    if n > 1 and not math.isnan(sd) and metric not in _NO_SPREAD:
        text += f" ± {_num(sd, metric, _digits(metric, mean * _SCALE.get(metric, 1.0)))}"
    return text


def _seeds(n: float) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return DASH
    if math.isinf(n):
        return f"> {stats.MAX_SEEDS:,}"
    return str(int(n))


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def build_tables(df, *, method: str = "t", baseline: Mapping[str, Any] | None = None, metric: str | None = None,
                 paper: PaperResults | None = None, units: list[list[str]] | None = None,
                 baseline_key: str = "report.baseline") -> ReportTables:
    """The report of the runs in ``df`` (:func:`focalexp.sweep.collect`) as DataFrames: per-arm means with
    intervals, and (with ``baseline`` or ``paper``) the comparison table."""
    import pandas as pd

    stats._check_method(method)
    axes = [a for a in df.attrs.get("axes", []) if a in df.columns]
    done = df[df["status"] == "done"]
    n_done = len(done)
    out = ReportTables(title=f"{df.attrs.get('name', 'sweep')}: {n_done} of {len(df)} runs done", method=method,
                       axes=axes)
    if df.attrs.get("mixed_code"):
        out.notes.append(df.attrs["mixed_code"])
    metrics = [m for m in METRICS if m in done.columns and done[m].notna().any()]
    if done.empty or not metrics:
        out.notes.append("No finished runs yet.")
        return out
    if metric is None:
        metric = paper.metric if paper is not None and paper.metric in metrics else next(
            (m for m in ACCURACY_METRICS + ("images_per_s", "train_images_per_s", "gmacs") if m in metrics), metrics[0])
    elif metric not in metrics:
        raise ConfigError(f"no finished run reports {metric!r}; metrics here: {', '.join(metrics)}", key="report.metric")
    out.metric = metric
    if paper is not None and paper.metric != metric:
        out.notes.append(f"The paper's numbers ({paper.source}) are of {METRICS[paper.metric]}, not "
                         f"{METRICS[metric]}: not shown.")
        paper = None
    prim = stats.arm_stats(df, metric, axes, method)
    out.arm_numbers = prim
    several = bool((prim["n"] > 1).any())
    label = METRICS[metric]

    # -- per arm
    table = prim[axes].copy() if axes else pd.DataFrame(index=prim.index)
    for a in axes:
        table[a] = table[a].astype(str)
    d = _digits(metric, float(prim["mean"].abs().max()) * _SCALE.get(metric, 1.0))
    table[label] = [_num(m, metric, d) for m in prim["mean"]]
    if several:
        table["95% CI"] = [f"[{_num(lo, metric, d)}, {_num(hi, metric, d)}]" if n > 1 else f"{DASH} (1 seed)"
                           for lo, hi, n in zip(prim["lo"], prim["hi"], prim["n"])]
    for m in metrics:
        if m == metric:
            continue
        s = stats.arm_stats(df, m, axes, "t")
        cells = {tuple(str(r[a]) for a in axes): _mean_sd(r["mean"], r["sd"], int(r["n"]), m) for _, r in s.iterrows()}
        table[METRICS[m]] = [cells.get(tuple(str(r[a]) for a in axes), DASH) for _, r in prim.iterrows()]
    table["seeds"] = prim["n"].astype(int).astype(str)
    out.arms = table
    if several:
        out.notes.append(f"{label}: mean and 95% interval over seeds, {stats.method_label(method)}; "
                         "other metrics: mean ± sd over seeds.")
    else:
        out.notes.append("One seed per arm: no intervals, p-values or power (they need two or more seeds per arm).")

    # -- against the baseline and the paper
    if not baseline and paper is None:
        return out
    arms = [dict(zip(axes, r)) for r in prim[axes].itertuples(index=False, name=None)] if axes else [{}]
    paired = None
    if baseline:
        _check_baseline(baseline, [], axes, baseline_key)  # the axes; values that match no finished arm: a note
        try:
            paired = stats.paired_vs_baseline(df, metric, baseline, axes, units, method)
        except ValueError as e:
            raise ConfigError(str(e), key=baseline_key) from None
        out.paired = paired
    paper_of: dict[int, float] = {}
    if paper is not None:
        for i, arm in enumerate(arms):
            hits = [pv.value for pv in paper.values if stats.matches(arm, pv.match)]
            if hits:
                paper_of[i] = hits[0]
    paper_delta: dict[int, float] = {}
    if paired is not None and paper is not None:
        for i, b in enumerate(paired["baseline"]):
            if _index(b) is not None and int(b) != i and i in paper_of and int(b) in paper_of:
                paper_delta[i] = paper_of[i] - paper_of[int(b)]
    out.paper_deltas = paper_delta

    def row(i: int) -> dict[str, str]:
        """One arm's cells of the comparison table."""
        r = {a: str(arms[i][a]) for a in axes}
        base = paired is not None and bool(paired.loc[i, "is_baseline"])
        if paper is not None:
            r["paper"] = _num(paper_of.get(i, math.nan), metric, d)
            if paired is not None:
                r["paper Δ"] = "baseline" if base else _num(paper_delta.get(i, math.nan), metric, d, signed=True)
        r["ours"] = _num(prim.loc[i, "mean"], metric, d)
        if paired is None:
            return r
        p = paired.loc[i]
        r["ours Δ"] = "baseline" if base else _num(p["delta"], metric, d, signed=True)
        if several:
            pairs = int(p["n_pairs"])
            r["95% CI of Δ"] = "" if base else (
                f"[{_num(p['lo'], metric, d, signed=True)}, {_num(p['hi'], metric, d, signed=True)}]" if pairs > 1
                else f"{DASH} ({pairs} paired)")
            r["p (paired t)"] = "" if base else _p(p["p"])
            r["distinguishable"] = "" if base else (("yes" if p["distinguishable"] else "no") if pairs > 1 else DASH)
            r["seeds for 80% power"] = "" if base else _seeds(p["seeds_needed"])
        if paper is not None:
            r["direction agrees"] = _direction(paper_delta.get(i), p["delta"], base)
        return r

    comp = pd.DataFrame([row(i) for i in range(len(arms))])
    out.comparison = comp
    notes = out.comparison_notes
    if paper is not None:
        notes.append(f"paper: {paper.source}, {label}; {len(paper_of)} of {len(arms)} arms have a published number.")
    if paired is not None:
        shown = ", ".join(f"{k}={v}" for k, v in baseline.items())
        notes.append(f"Δ = arm − baseline ({shown}" + (", within each value of the other axes" if
                                                         _stratified(paired) else "") + "), paired by seed.")
        if several:
            notes.append(f"95% CI of Δ: {stats.method_label(method)} of the paired differences; p: paired t-test; "
                         "distinguishable: the interval excludes 0 at this number of seeds; seeds for 80% power: "
                         "a paired t-test (α = 0.05, two-sided) detecting the observed Δ given the observed spread "
                         "of the differences.")
        if not paired["is_baseline"].any():
            notes.append(f"The baseline ({shown}) has no finished run: no differences.")
        if paper is not None:
            agree = [i for i in paper_delta if _direction(paper_delta[i], paired.loc[i, "delta"], False) == "yes"]
            checked = [i for i in paper_delta if _direction(paper_delta[i], paired.loc[i, "delta"], False) in ("yes", "no")]
            if checked:
                dist = sum(bool(paired.loc[i, "distinguishable"]) for i in agree)
                notes.append(f"Direction agrees with the paper for {len(agree)} of {len(checked)} arms"
                             + (f" ({dist} of them distinguishable at these seeds)." if several else "."))
    elif paper is not None:
        notes.append("No baseline (report.baseline in the spec, or --baseline KEY=VALUE): the paper's values and "
                     "ours side by side, no directions.")
    return out


def _index(b: Any) -> int | None:
    """A baseline index of :func:`stats.paired_vs_baseline` (pandas may hold None as NaN)."""
    return None if b is None or (isinstance(b, float) and math.isnan(b)) else int(b)


def _stratified(paired) -> bool:
    return len({_index(b) for b in paired["baseline"]} - {None}) > 1


def _direction(paper_delta: float | None, ours: float, is_base: bool) -> str:
    if is_base:
        return ""
    if paper_delta is None or ours is None or math.isnan(ours):
        return DASH
    if paper_delta == 0:
        return "paper: no change"
    if ours == 0:
        return "ours: no change"
    return "yes" if (paper_delta > 0) == (ours > 0) else "no"


def _latex(table, n_axes: int) -> str:
    """A booktabs tabular of a table of strings (pandas Styler): axes left-aligned, numbers right."""
    styler = table.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    tex = styler.to_latex(hrules=True, column_format="l" * n_axes + "r" * (len(table.columns) - n_axes))
    for a, b in (("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "-"), ("—", "--"), ("α", r"$\alpha$"), ("< ", "$<$ ")):
        tex = tex.replace(a, b)
    return tex


def _md(table, n_axes: int) -> str:
    """A markdown table of a table of strings, cells as written ("0.50", "+1.20", "—"): axes left-aligned,
    numbers right."""
    align = ("left",) * n_axes + ("right",) * (len(table.columns) - n_axes)
    return table.to_markdown(index=False, disable_numparse=True, colalign=align)


def markdown(t: ReportTables) -> str:
    parts = [f"# {t.title}", ""]
    if t.arms is None:
        parts += t.notes
        return "\n".join(parts) + "\n"
    parts += t.notes + ["", _md(t.arms, len(t.axes))]
    if t.comparison is not None:
        head = f"## {METRICS[t.metric]}: " + ("against the baseline" if t.paired is not None else "")
        if any("paper:" in n for n in t.comparison_notes):
            head += (" and " if t.paired is not None else "") + "beside the paper"
        parts += ["", head, "", *t.comparison_notes, "", _md(t.comparison, len(t.axes))]
    return "\n".join(parts) + "\n"


def report(sweep_dir: str | Path, formats: tuple[str, ...] = ("png",), *, ci: str = "t",
           baseline: Mapping[str, Any] | None = None, metric: str | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.tex`` and figures into ``SWEEP/report/``; returns the files written.

    ``ci``: ``t`` or ``bootstrap``. ``baseline`` (axis -> value) and ``metric`` override the spec's
    ``report:`` section; the spec's ``paper:`` values are put beside ours."""
    stats._check_method(ci)
    sweep = SweepDir(sweep_dir)
    manifest = sweep.manifest()  # everything is checked before anything is written
    if baseline:
        _check_baseline(baseline, [r["axes"] for r in manifest["runs"]], manifest["axes"], "--baseline")
    options, paper, units = spec_sections(sweep)
    df = collect(sweep_dir)
    key = "--baseline" if baseline else "report.baseline"
    t = build_tables(df, method=ci, baseline=baseline or options.baseline, metric=metric or options.metric,
                     paper=paper, units=units, baseline_key=key)
    out = sweep.path / "report"
    out.mkdir(exist_ok=True)
    (out / "report.md").write_text(markdown(t))
    files: dict[str, Path] = {"markdown": out / "report.md"}
    if t.arms is None:
        return files
    tex = [f"% {t.title}", *(f"% {n}" for n in t.notes), _latex(t.arms, len(t.axes))]
    if t.comparison is not None:
        tex += ["", *(f"% {n}" for n in t.comparison_notes), _latex(t.comparison, len(t.axes))]
    (out / "report.tex").write_text("\n".join(tex))
    files["latex"] = out / "report.tex"
    if formats:
        from .plots import sweep_figures

        files.update(sweep_figures(df, t, out, formats))
    return files

