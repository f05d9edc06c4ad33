"""Every focalexp preset measured by the library, beside the paper's and README's numbers.

    python analysis/paper_table.py --threads 1            # every preset: params + GMACs + flops() (seconds)
    python analysis/paper_table.py --fast                 # params + the official flops() formula only
    python analysis/paper_table.py --models focalnet_t_srf,focalnet_t_lrf,focalnet_t_iso --throughput --threads 2

GMACs come from ``focalexp.analysis.presets_table.preset_counts``: fvcore's count, computed by the analytic
counter that equals it (``focalexp.models.macs``), or traced by fvcore (and kept in the count cache) for a
token mixer it does not model.

One row per published reference of a preset (``Preset.rows``: a preset can have several, e.g. at 384 px or
with another classifier head), one row for a preset without any (toolkit and new variants). Measured:

params
    trainable parameters, exact, of the architecture at that row's head.
GMACs
    fvcore's count in the papers' convention (``preset_counts``, see above: 1 multiply-add = 1;
    conv/linear/matmul MACs + 5/element per LayerNorm; element-wise ops not counted), batch 1, at the row's
    resolution and head. This is what timm's benchmark CSVs report. Skipped with ``--fast``.
flops()
    the official repository's analytic ``FocalNet.flops()`` (``official_flops``), which is what the README
    and the paper print ("FLOPs (G)"); none for token mixers the official code does not have.

Each is shown beside its reference and the difference (``ref`` columns: exact counts or timm's values
from ``shared/reference/focalnet.md`` §7, ``paper`` column: the numbers as the paper/README print them,
params in M / GFLOPs). A row is marked ``exact`` when every reference number it has is reproduced at the
precision it is given with (an exact count exactly; a printed 4.4 G by a measurement that rounds to 4.4),
``differs`` otherwise, naming what differs; the notes below the table say why, where known. The paper's
printed GFLOPs are compared with ``flops()`` (their convention), or with GMACs for mixers ``flops()``
does not cover.

``--throughput`` adds images/s measured through the benchmark machinery (``focalexp bench``'s
``run_bench``: inference, fixed random input, warm-up, median over rounds), one model at a time on
``--device`` (CPU by default: small batch and few rounds keep it quick; large models still take a
minute each), beside the paper's V100 numbers (batch 128, fp32). The absolute numbers of different
hardware do not compare; the ``rel.`` columns give each model's speed relative to FocalNet-T (SRF) on
the same hardware, which do.

Writes ``paper_table.md`` and ``paper_table.csv`` into ``--out`` (default ``analysis/out``) and prints the
markdown.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from focalexp.analysis.bench import run_bench
from focalexp.analysis.presets_table import preset_counts, row_config
from focalexp.models.presets import PaperRow, Preset, get_preset, list_presets

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
KINDS = ("released", "paper", "toolkit")

# The paper's / README's throughput (img/s, one V100, batch 128, fp32), by (preset, resolution):
# README tables (§2), Tables 2, 3, 4, 12, 13, 14, 16 of the paper (shared/reference/focalnet.md §2-3).
PAPER_THROUGHPUT = {
    ("focalnet_t_srf", 224): 743, ("focalnet_t_lrf", 224): 696,
    ("focalnet_s_srf", 224): 434, ("focalnet_s_lrf", 224): 406,
    ("focalnet_b_srf", 224): 280, ("focalnet_b_lrf", 224): 269, ("focalnet_b_srf", 384): 94,
    ("focalnet_t_iso", 224): 2334, ("focalnet_s_iso", 224): 920,
    ("focalnet_b_iso", 224): 300, ("focalnet_b_iso_postln", 224): 300,  # one FocalNet-B/16 row, two layouts
    ("focalnet_t_srf_overlap", 224): 730, ("focalnet_s_srf_overlap", 224): 424, ("focalnet_b_srf_overlap", 224): 278,
    ("focalnet_t_srf_deep", 224): 663, ("focalnet_s_srf_deep", 224): 440, ("focalnet_b_srf_deep", 224): 247,
    ("focalnet_l_srf", 224): 144, ("focalnet_l_srf", 384): 50,
    ("focalnet_t_fl0", 224): 883, ("focalnet_t_fl1", 224): 815, ("focalnet_t_fl4", 224): 592,
    ("focalnet_t_fl1_k13", 224): 661,
    ("focalnet_t_lrf_dwconv", 224): 738, ("focalnet_t_lrf_pooling", 224): 676,
    ("focalnet_t_lrf_additive", 224): 670, ("focalnet_t_lrf_no_global", 224): 683,
    ("focalnet_t_lrf_top_only", 224): 698, ("focalnet_t_lrf_no_gating", 224): 707,
}
BASELINE = ("focalnet_t_srf", 224)

COLUMNS = [
    "model", "kind", "source", "res", "head", "params", "ref_params", "d_params", "gmacs", "ref_gmacs", "d_gmacs",
    "flops_g", "ref_flops_g", "d_flops_g", "paper_params_m", "paper_gflops", "match", "differs",
]
THROUGHPUT_COLUMNS = ["img_s", "img_s_min", "img_s_max", "paper_img_s", "rel_img_s", "paper_rel_img_s"]


# ---------------------------------------------------------------------------- comparing
def decimals(v: float | int) -> int:
    """Digits after the point of a reference number as written (28.4 -> 1, 4.413 -> 3, 207 -> 0)."""
    s = repr(v)
    return len(s.split(".")[1]) if "." in s and "e" not in s else 0


def same_at_precision(measured: float, ref: float | int) -> bool:
    d = decimals(ref)
    return abs(round(measured, d) - ref) < 1e-9 * max(1.0, abs(ref))


def compare(rec: dict[str, Any], row: PaperRow | None) -> None:
    """Fill the reference, difference and match fields of ``rec`` (measured fields already set)."""
    n, g, f = rec["params"], rec["gmacs"], rec["flops_g"]
    differs: list[str] = []
    checked = 0
    if row is None:
        rec.update(match="no reference", differs="")
        return
    if row.params is not None:
        rec["ref_params"], rec["d_params"] = row.params, n - row.params
        checked += 1
        if n != row.params:
            differs.append(f"params ({n:,} vs {row.params:,})")
    elif row.params_m is not None:
        got = round(n / 1e6, row.params_m_digits)
        rec["ref_params"], rec["d_params"] = f"{row.params_m:.{row.params_m_digits}f} M", round(got - row.params_m, 6)
        checked += 1
        if abs(got - row.params_m) > 1e-9:
            differs.append(f"params ({got} M vs {row.params_m} M)")
    if row.gmacs is not None and g is not None:
        rec["ref_gmacs"], rec["d_gmacs"] = row.gmacs, g - row.gmacs
        checked += 1
        if not same_at_precision(g, row.gmacs):
            differs.append(f"GMACs ({g:.3f} vs {row.gmacs})")
    if row.official_flops_g is not None and f is not None:
        rec["ref_flops_g"], rec["d_flops_g"] = row.official_flops_g, f - row.official_flops_g
        checked += 1
        if not same_at_precision(f, row.official_flops_g):
            differs.append(f"flops() ({f:.3f} vs {row.official_flops_g})")
    if row.paper_params_m is not None:
        rec["paper_params_m"] = row.paper_params_m
        checked += 1
        if not same_at_precision(n / 1e6, row.paper_params_m):
            differs.append(f"printed params ({n / 1e6:.2f} M vs {row.paper_params_m} M)")
    if row.paper_gflops is not None:
        rec["paper_gflops"] = row.paper_gflops
        ours = f if f is not None else g  # the paper's convention is flops(); GMACs for mixers it lacks
        if ours is not None:
            checked += 1
            if not same_at_precision(ours, row.paper_gflops):
                what = "flops()" if f is not None else "GMACs"
                differs.append(f"printed GFLOPs ({what} {ours:.3f} vs {row.paper_gflops})")
    if checked == 0:
        rec.update(match="not compared", differs="")
    else:
        rec.update(match="differs" if differs else "exact", differs="; ".join(differs))


# ---------------------------------------------------------------------------- measuring
def measure(presets: list[Preset], *, fast: bool, progress=None) -> list[dict[str, Any]]:
    """One record per (preset, reference row); counted once per distinct configuration (the library's
    ``preset_counts``: params, fvcore GMACs unless ``fast``, official flops())."""
    counted: dict[Any, Any] = {}
    records = []
    for p in presets:
        for row in p.rows or (None,):
            cfg = row_config(p, row)
            key = (p.name, cfg.img_size, cfg.num_classes)
            if key not in counted:
                if progress:
                    progress(f"{p.name} @ {cfg.img_size}" + ("" if cfg is p.config else f", {cfg.num_classes} classes"))
                counted[key] = preset_counts(cfg, fast=fast)
            n = counted[key]
            rec = {c: None for c in COLUMNS}
            rec.update(model=p.name, kind=p.kind, source="" if row is None else row.source, res=cfg.img_size,
                       head=cfg.num_classes, params=n.params, gmacs=n.gmacs, flops_g=n.official_gflops,
                       note="" if row is None else row.note)
            compare(rec, row)
            if rec["match"] == "differs" and not rec["note"]:
                rec["note"] = p.doc  # the preset's description says why, where it is known
            records.append(rec)
    return records


def _bench_one(name: str, img_size: int, args) -> tuple[tuple[float, float, float], str]:
    """((median, min, max) images/s, device description) of one preset at ``img_size``, inference."""
    rep = run_bench([name], img_size=img_size, batch_size=args.batch_size, device=args.device,
                    rounds=args.rounds, warmup=args.warmup, steps_per_round=1, threads=args.threads, flops=False)
    r, env = rep.results[0], rep.env
    desc = f"{env['device']} ({env['device_name']}" + (
        f", {env['threads']} thread{'s' if env['threads'] != 1 else ''})" if env["device"] == "cpu" else ")")
    return (r.median, min(r.images_per_s), max(r.images_per_s)), desc


def add_throughput(records: list[dict[str, Any]], args, progress=None) -> dict[str, Any]:
    """Fill the throughput fields of ``records`` (one timing per preset and resolution); returns the setup."""
    done: dict[tuple[str, int], tuple[float, float, float]] = {}
    desc = args.device
    for rec in records:
        key = (rec["model"], rec["res"])
        if key not in done:
            if progress:
                progress(f"timing {key[0]} @ {key[1]}")
            done[key], desc = _bench_one(key[0], key[1], args)
        rec["img_s"], rec["img_s_min"], rec["img_s_max"] = done[key]
        rec["paper_img_s"] = PAPER_THROUGHPUT.get(key)
        rec["rel_img_s"] = rec["paper_rel_img_s"] = None
    base = done.get(BASELINE)
    if base is not None:
        for rec in records:
            rec["rel_img_s"] = rec["img_s"] / base[0]
            if rec["paper_img_s"] is not None:
                rec["paper_rel_img_s"] = rec["paper_img_s"] / PAPER_THROUGHPUT[BASELINE]
    return {"device": desc, "batch": args.batch_size, "rounds": args.rounds, "warmup": args.warmup}


# ---------------------------------------------------------------------------- writing
def _num(v, fmt: str) -> str:
    return "-" if v is None or v == "" else format(v, fmt)


def _signed(v, digits: int) -> str:
    if v is None or isinstance(v, str):
        return "-"
    return f"{v:+.{digits}f}" if round(v, digits) != 0 else f"{0:.{digits}f}"


def markdown(records: list[dict[str, Any]], *, fast: bool, bench: dict | None) -> str:
    head = ["model", "kind", "res", "head", "params", "ref params", "Δ", "GMACs", "ref GMACs", "Δ",
            "flops() G", "ref flops()", "Δ", "paper M / G", "match"]
    if bench:
        head += ["img/s", "paper img/s (V100)", "rel. to T-SRF (ours / paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    notes: list[str] = []
    for r in records:
        ref_p = r["ref_params"]
        if isinstance(ref_p, int):
            ref_p, d_p = f"{ref_p:,}", f"{r['d_params']:+,}" if r["d_params"] else "0"
        elif isinstance(ref_p, str):
            d_p = _signed(r["d_params"], 2) + " M"
        else:
            ref_p, d_p = "-", "-"
        paper = " / ".join("-" if r[k] is None else str(r[k]) for k in ("paper_params_m", "paper_gflops"))
        mark = {"exact": "✓ exact", "differs": "✗ differs"}.get(r["match"], r["match"])
        if r["differs"] or r["note"]:
            notes.append(f"- **{r['model']}** ({r['source'] or 'no reference'}, {r['res']} px): "
                         + "; ".join(x for x in (r["differs"] and f"differs: {r['differs']}", r["note"]) if x))
            mark += f" [{len(notes)}]"
        cells = [
            f"`{r['model']}`", r["kind"], str(r["res"]), str(r["head"]), f"{r['params']:,}", ref_p, d_p,
            _num(r["gmacs"], ".3f"), _num(r["ref_gmacs"], ""), _signed(r["d_gmacs"], 3),
            _num(r["flops_g"], ".3f"), _num(r["ref_flops_g"], ""), _signed(r["d_flops_g"], 3), paper, mark,
        ]
        if bench:
            rel = "-" if r["rel_img_s"] is None else f"{r['rel_img_s']:.2f}"
            rel += " / " + ("-" if r["paper_rel_img_s"] is None else f"{r['paper_rel_img_s']:.2f}")
            cells += [f"{r['img_s']:.1f}", _num(r["paper_img_s"], ""), rel]
        lines.append("| " + " | ".join(cells) + " |")
    n_exact = sum(r["match"] == "exact" for r in records)
    n_diff = sum(r["match"] == "differs" for r in records)
    n_none = len(records) - n_exact - n_diff
    import timm

    out = [
        "# FocalNet presets: measured vs published",
        "",
        f"{len(records)} rows ({len({r['model'] for r in records})} presets): **{n_exact} exact**, {n_diff} differ, "
        f"{n_none} without reference numbers. Generated by `python analysis/paper_table.py"
        + (" --fast" if fast else "") + (" --throughput" if bench else "") + "` "
        f"(torch {torch.__version__}, timm {timm.__version__}, Python {platform.python_version()}).",
        "",
        "- **params**: trainable parameters, exact, at the row's head (`head`: classes; 0 = no head). "
        "**ref params**: the exact count of `shared/reference/focalnet.md` §7 (or a count in M to the digits given).",
        "- **GMACs**: fvcore, the papers' convention (1 multiply-add = 1; conv/linear/matmul + 5/elem LayerNorm; "
        "element-wise ops not counted), batch 1 at `res`" + (" — not counted (`--fast`)" if fast else "")
        + ". **ref GMACs**: timm's benchmark CSV / §7.",
        "- **flops() G**: the official repository's analytic `FocalNet.flops()`, what the paper and README print; "
        "**paper M / G**: params and GFLOPs as printed.",
        "- **Δ**: measured − reference. **match**: ✓ when every reference number of the row is reproduced at the "
        "precision it is given with; ✗ names what differs (notes below).",
    ]
    if bench:
        out.append(f"- **img/s**: inference throughput on {bench['device']}, batch {bench['batch']}, median of "
                   f"{bench['rounds']} rounds after {bench['warmup']} warm-up step(s) "
                   "(`focalexp.analysis.bench.run_bench`, fp32, random input); **paper img/s**: one V100, batch 128, "
                   "fp32. Compare the **rel.** columns (speed relative to FocalNet-T SRF on the same hardware), "
                   "not the absolute numbers.")
    out += ["", *lines, ""]
    if notes:
        out += ["Notes:", "", *[f"{i}. {n[2:]}" for i, n in enumerate(notes, 1)], ""]
    return "\n".join(out)


def write_csv(path: Path, records: list[dict[str, Any]], bench: bool) -> None:
    cols = COLUMNS + ["note"] + (THROUGHPUT_COLUMNS if bench else [])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                        for k in cols})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=KINDS, help="only presets of this kind (default: all)")
    ap.add_argument("--models", help="comma-separated preset names or aliases (default: every preset of --kind)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: analysis/out)")
    ap.add_argument("--fast", action="store_true", help="no fvcore count: params and the official flops() only")
    ap.add_argument("--throughput", action="store_true", help="add images/s measured with the bench machinery")
    ap.add_argument("--device", default="cpu", help="throughput device: cpu (default), cuda, cuda:N")
    ap.add_argument("--batch-size", type=int, default=4, help="throughput batch (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="throughput rounds (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="throughput warm-up steps (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--quiet", action="store_true", help="do not print the table")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    presets = list_presets(args.kind)
    if args.models:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        try:
            wanted = [get_preset(n).name for n in names]
        except Exception as err:  # UnknownNameError: one line, like the CLI
            ap.error(f"--models: {err}")
        presets = [p for p in presets if p.name in wanted]
        if not presets:
            ap.error(f"--models: none of {', '.join(names)} is a preset of kind {args.kind}")
    say = (lambda s: print(f"  {s}", file=sys.stderr)) if sys.stderr.isatty() else None
    t0 = time.perf_counter()
    records = measure(presets, fast=args.fast, progress=say)
    bench = add_throughput(records, args, progress=say) if args.throughput else None

    args.out.mkdir(parents=True, exist_ok=True)
    md = markdown(records, fast=args.fast, bench=bench)
    (args.out / "paper_table.md").write_text(md + "\n")
    write_csv(args.out / "paper_table.csv", records, bench is not None)
    if not args.quiet:
        print(md)
    print(f"wrote {args.out / 'paper_table.md'}, {args.out / 'paper_table.csv'} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
