"""Compute and activation memory against input resolution: focal modulation vs window vs global attention.

    python analysis/complexity_scaling.py --threads 1          # 224..1024, five models: ~3 min on one CPU core
    python analysis/complexity_scaling.py --meta-only           # GMACs from the meta-device count only: ~30 s
    python analysis/complexity_scaling.py --models focal_srf,swin_t,deit_s --resolutions 224,512,1024
    python analysis/complexity_scaling.py --replot              # redraw the figure from the CSV in --out

Writes ``complexity_scaling.png``/``.pdf`` (two panels: GMACs and activation memory against the input side
R, log-log), ``complexity_scaling.csv`` (one row per model and resolution) and ``complexity_scaling_slopes.csv``
(the growth exponents) into ``--out`` (default ``analysis/out``), and prints a summary.

Models (``--models``; default: all but ``focal_lrf``). The set pairs each mixer with the comparison the paper
makes, and isolates the mixer where it can:

``focal_srf`` / ``focal_lrf``
    FocalNet-T (SRF / LRF), focal modulation: focalexp presets ``focalnet_t_srf`` / ``focalnet_t_lrf``.
``window_focalnet``
    Window attention in the FocalNet-T macro-architecture: preset ``focalnet_t_lrf_window_attention``
    (Swin's shifted 7x7 W-MSA, 32 channels/head, as token mixer; same stem, downsampling, MLPs and norms
    as FocalNet-T, so the difference to ``focal_srf`` is the mixer alone).
``swin_t``
    Swin-T itself (timm ``swin_tiny_patch4_window7_224`` built with ``img_size=R``): the published window-
    attention model the paper compares FocalNet-T with (Table 1: 28.3 M, 4.5 G). Checks that the focalexp
    variant is representative.
``global_focalnet``
    Global self-attention in the same FocalNet-T macro-architecture, stride-4 tokens: the window-attention
    variant with ``window_size = R/4``, so every stage is one window covering the whole map (no shift, no
    padding): full multi-head self-attention over all H/4 x W/4 tokens (with a relative position bias over
    the map). The pure cost of global attention at the token density a dense-prediction backbone needs.
``deit_s``
    DeiT-S/16 (timm ``deit_small_patch16_224``, ``img_size=R``, position embeddings sized for R): the
    standard global-attention model with the same budget as FocalNet-T at 224 (22 M, 4.6 G; paper Tables
    1 and 16) but coarse stride-16 tokens, so its quadratic term takes over only at higher resolutions.

Resolutions: 224, 320, 384, 512, 640, 768, 896, 1024 (multiples of 32, the network stride of the
hierarchical models, so every model runs at every size). Window attention pads each map to whole 7x7
windows (timm's Swin and focalexp's ``WindowAttention`` both do; padded tokens are computed and masked),
so its cost lies slightly above a pure R^2 law where R/32 is not a multiple of 7 (exact at 224 and 896).

Measures:

GMACs
    fvcore through ``focalexp.analysis.flops.measure_flops``: the papers' convention (1 multiply-add = 1;
    conv/linear/matmul MACs, ``scaled_dot_product_attention``'s two matmuls, 5/element per affine LayerNorm;
    element-wise ops not counted), batch 1, the model's 1000-class head included. fvcore runs the model, so
    global attention at stride 4 above ``--fvcore-max-res-global`` (default 320; beyond it the attention
    matrices reach GBs to tens of GB and the real forward takes minutes) is counted instead by a
    meta-device count of the same convention (``torch``'s ``FlopCounterMode`` / 2 for matmuls and
    convolutions, plus 5/element per affine LayerNorm and 1/input element for adaptive pooling). Both are
    computed wherever fvcore runs and must agree exactly (the script stops if not); the CSV says which
    one each point comes from (``gmacs_source``).
Activation memory
    Bytes of the distinct floating-point tensor storages that autograd saves for the backward pass during
    one training-mode forward pass (``torch.autograd.graph.saved_tensors_hooks``), batch 1, fp32, excluding
    parameters and buffers, and integer/bool tensors (constant index tensors such as focalexp's cached
    relative-position index, which Swin keeps as a buffer; dropout masks). Each storage is counted once
    however many ops save it; the input image is included, the logits and the loss are not. Attention is
    standard, non-fused attention (PyTorch's math SDPA backend forced; timm's ``fused_attn`` off), so every
    softmax matrix is materialised and saved: fused flash / memory-efficient kernels would save O(N)
    instead, removing the quadratic memory term but not the quadratic compute. Measured on the meta device
    (shapes only, no memory allocated), which gives byte-for-byte the same count as a real CPU forward
    (checked in tests/test_analysis_scripts.py). It is the memory a training step holds between forward
    and backward, per image: the peak of a real step adds weights, gradients, optimizer state and
    transient workspace.

Growth exponent: the slope of a least-squares line through log(value) against log(R) over all resolutions
given (2 = linear in pixels, 4 = quadratic in pixels), and the local slope between the two largest ones.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.utils._python_dispatch

from focalexp.analysis.flops import measure_flops
from focalexp.models.resolve import resolve_model_spec

RESOLUTIONS = (224, 320, 384, 512, 640, 768, 896, 1024)
DEFAULT_OUT = Path(__file__).resolve().parent / "out"


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    mixer: str  # "focal modulation", "window attention", "global attention"
    name: str  # focalexp preset or timm model
    color: str
    linestyle: str
    marker: str
    quadratic: bool = False  # fvcore limited to --fvcore-max-res-global (attention matrices too big to run)

    def overrides(self, res: int) -> dict:
        if self.name.startswith("focalnet"):
            o = {"img_size": res}
            if self.key == "global_focalnet":
                o["window_size"] = res // 4  # one window = the whole stage-1 map (and every later map)
            return o
        return {"img_size": res}  # timm: positional embeddings / attention masks sized for R


MODELS = {
    e.key: e
    for e in (
        Entry("focal_srf", "FocalNet-T (SRF): focal modulation", "focal modulation", "focalnet_t_srf",
              "tab:blue", "-", "o"),
        Entry("focal_lrf", "FocalNet-T (LRF): focal modulation", "focal modulation", "focalnet_t_lrf",
              "tab:cyan", "-", "v"),
        Entry("window_focalnet", "FocalNet-T macro + 7x7 window attention (focalexp)", "window attention",
              "focalnet_t_lrf_window_attention", "tab:green", "--", "s"),
        Entry("swin_t", "Swin-T (timm): 7x7 window attention", "window attention",
              "swin_tiny_patch4_window7_224", "darkgreen", "-", "D"),
        Entry("global_focalnet", "FocalNet-T macro + global attention, stride-4 tokens", "global attention",
              "focalnet_t_lrf_window_attention", "tab:red", "--", "^", quadratic=True),
        Entry("deit_s", "DeiT-S/16 (timm): global attention, stride-16 tokens", "global attention",
              "deit_small_patch16_224", "darkred", "-", "P"),
    )
}
DEFAULT_MODELS = ("focal_srf", "window_focalnet", "swin_t", "global_focalnet", "deit_s")


# ---------------------------------------------------------------------------- measuring
def _unfuse_attention(model: nn.Module) -> nn.Module:
    """timm attention modules: explicit softmax(QK^T)V instead of F.scaled_dot_product_attention."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def build(entry: Entry, res: int, device: str = "cpu") -> nn.Module:
    """The model at resolution ``res``: zero weights for FocalNets on CPU (fast), meta tensors on 'meta'."""
    spec = resolve_model_spec(entry.name, entry.overrides(res))
    if device == "meta":
        with torch.device("meta"):
            return _unfuse_attention(spec.build())
    return _unfuse_attention(spec.build(counting=True))


def _math_sdpa():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


class _NormCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """fvcore's LayerNorm and adaptive-pool terms, which FlopCounterMode leaves out."""

    def __init__(self):
        super().__init__()
        self.macs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        op = func.overloadpacket
        if op is torch.ops.aten.native_layer_norm:
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            self.macs += args[0].numel() * (5 if weight is not None else 4)
        elif op in (torch.ops.aten._adaptive_avg_pool2d, torch.ops.aten.adaptive_avg_pool2d):
            self.macs += args[0].numel()
        return out


def meta_gmacs(model: nn.Module, res: int) -> float:
    """GMACs in fvcore's convention, counted on the meta device (no memory, no arithmetic)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.device("meta"), torch.no_grad(), _math_sdpa():
        x = torch.zeros(1, 3, res, res)
        with FlopCounterMode(display=False) as fc, _NormCounter() as nc:
            model(x)
    return (fc.get_total_flops() / 2 + nc.macs) / 1e9


def saved_activation_bytes(model: nn.Module, res: int, device: str = "meta") -> tuple[int, int]:
    """(bytes, storages) saved for backward by one training forward at batch 1 (see the module docstring).

    ``model`` must live on ``device``; 'meta' allocates nothing, 'cpu' runs for real (same count).
    """
    model.train()
    constants = {t.untyped_storage()._cdata for t in list(model.parameters()) + list(model.buffers())}
    sizes: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # hold every saved tensor so that no storage is freed and its id reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        keep.append(t)
        if t.is_floating_point():
            s = t.untyped_storage()
            if s._cdata not in constants:
                sizes[s._cdata] = s.nbytes()
        return t

    with torch.device(device), _math_sdpa(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(1, 3, res, res))
    return sum(sizes.values()), len(sizes)


def measure_point(entry: Entry, res: int, *, fvcore: bool) -> dict:
    t0 = time.perf_counter()
    meta = build(entry, res, "meta")
    params = sum(p.numel() for p in meta.parameters() if p.requires_grad)
    g_meta = meta_gmacs(meta, res)
    act, n_saved = saved_activation_bytes(meta, res, "meta")
    del meta
    g_fv = None
    if fvcore:
        g_fv = measure_flops(build(entry, res, "cpu"), res, name=entry.key, cross_check=False).gmacs
        if not math.isclose(g_fv, g_meta, rel_tol=1e-9):
            raise RuntimeError(f"{entry.key} @ {res}: fvcore {g_fv} GMACs != meta count {g_meta}")
    return {
        "model": entry.key,
        "label": entry.label,
        "mixer": entry.mixer,
        "source_model": entry.name,
        "resolution": res,
        "params": params,
        "gmacs": g_fv if g_fv is not None else g_meta,
        "gmacs_source": "fvcore" if g_fv is not None else "meta count",
        "gmacs_fvcore": g_fv,
        "gmacs_meta": g_meta,
        "activation_bytes": act,
        "activation_gib": act / 2**30,
        "saved_storages": n_saved,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def slopes(rows: list[dict]) -> list[dict]:
    out = []
    for key in dict.fromkeys(r["model"] for r in rows):
        rs = sorted((r for r in rows if r["model"] == key), key=lambda r: r["resolution"])
        xs = [r["resolution"] for r in rs]
        d = {"model": key, "label": rs[0]["label"], "mixer": rs[0]["mixer"], "res_min": xs[0], "res_max": xs[-1]}
        for q in ("gmacs", "activation_bytes"):
            ys = [r[q] for r in rs]
            d[f"{q}_slope_fit"] = slope(xs, ys) if len(xs) > 1 else float("nan")
            d[f"{q}_slope_top"] = slope(xs[-2:], ys[-2:]) if len(xs) > 1 else float("nan")
            d[f"{q}_ratio"] = ys[-1] / ys[0]
        out.append(d)
    return out


# ---------------------------------------------------------------------------- figure
CAPTION = (
    "Batch 1, fp32, 1000-class heads. GMACs: fvcore, the papers' convention (1 multiply-add = 1; conv, linear and "
    "attention matmuls, 5/element per LayerNorm; element-wise ops not counted). Activation memory: bytes of the "
    "distinct floating-point tensors autograd saves for backward in one training-mode forward pass (parameters "
    "excluded), with standard non-fused attention, so every softmax matrix is materialised; meta-device count. "
    "Slope: least-squares exponent of R over {lo}-{hi} px (2 = linear in pixels, 4 = quadratic). Window attention "
    "pads maps to whole 7x7 windows (exact at 224 and 896 px)."
)


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def plot(rows: list[dict], fits: list[dict], out: Path) -> list[Path]:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    res_all = sorted({r["resolution"] for r in rows})
    lo, hi = res_all[0], res_all[-1]
    keys = list(dict.fromkeys(r["model"] for r in rows))
    fit_by = {f["model"]: f for f in fits}
    fig, axes = plt.subplots(1, 2, figsize=(14, 8.6))
    panels = (
        ("gmacs", 1.0, "GMACs per image (fvcore, papers' convention)", "(a) Compute"),
        ("activation_bytes", 2.0**30, "activation memory saved for backward (GiB per image)",
         "(b) Activation memory of a training forward pass"),
    )
    for ax, (q, scale, ylabel, title) in zip(axes, panels):
        ends = []  # (x, y, colour) of each curve's last point, labelled after de-overlapping
        for key in keys:
            e = MODELS[key]
            rs = sorted((r for r in rows if r["model"] == key), key=lambda r: r["resolution"])
            xs = [r["resolution"] for r in rs]
            ys = [r[q] / scale for r in rs]
            style = {"markerfacecolor": "white", "markersize": 7} if key == "swin_t" else {"markersize": 5}
            ax.plot(xs, ys, color=e.color, linestyle=e.linestyle, marker=e.marker, linewidth=1.8, **style)
            ends.append((xs[-1], ys[-1], e.color))
        # value labels at the right end; labels that would overlap are pushed apart (in decades)
        ly = [math.log10(y) for _, y, _ in ends]
        gap = max(max(ly) - min(ly), 1.0) * 0.055
        pos: dict[int, float] = {}
        order = sorted(range(len(ends)), key=lambda i: ly[i])
        for j, i in enumerate(order):
            pos[i] = ly[i] if j == 0 else max(ly[i], pos[order[j - 1]] + gap)
        for i, (x, y, c) in enumerate(ends):
            ax.annotate(_fmt(y), (x, y), xytext=(x * 1.035, 10 ** pos[i]), va="center", fontsize=8.5, color=c)
        # guides: proportional to R^2 (linear in pixels) and R^4 (quadratic in pixels)
        if len(res_all) > 1:
            y0 = 0.55 * min(r[q] for r in rows if r["resolution"] == lo) / scale
            for p, txt in ((2, r"$\propto R^2$"), (4, r"$\propto R^4$")):
                gy = [y0, y0 * (hi / lo) ** p]
                ax.plot([lo, hi], gy, color="0.55", linestyle=":", linewidth=1, zorder=0)
                ax.annotate(txt, (hi, gy[1]), textcoords="offset points", xytext=(4, 0), va="center",
                            fontsize=9, color="0.4")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(res_all))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(r) for r in res_all])
        ax.set_xlim(lo / 1.08, hi * 1.28)
        ax.set_xlabel("input resolution R (pixels, R x R image; log scale)")
        ax.set_ylabel(ylabel + ", log scale")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", axis="y", alpha=0.1)

    handles = axes[0].get_lines()[: len(keys)]
    labels = []
    for key in keys:
        f = fit_by[key]
        txt = (f"GMACs $\\propto R^{{{f['gmacs_slope_fit']:.2f}}}$, "
               f"memory $\\propto R^{{{f['activation_bytes_slope_fit']:.2f}}}$")
        if len(res_all) > 2:
            txt += (f"   (last step {res_all[-2]}-{hi}: $R^{{{f['gmacs_slope_top']:.2f}}}$, "
                    f"$R^{{{f['activation_bytes_slope_top']:.2f}}}$)")
        labels.append(f"{MODELS[key].label}:   {txt}")
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.092), ncol=1, fontsize=9,
               frameon=True, title="growth exponents: least-squares slope of log(value) on log(R) over all sizes",
               title_fontsize=9)
    fig.suptitle(f"FocalNet-T vs window and global self-attention: cost against input resolution ({lo}-{hi} px)",
                 fontsize=13)
    fig.text(0.5, 0.008, "\n".join(textwrap.wrap(CAPTION.format(lo=lo, hi=hi), 200)), ha="center", va="bottom",
             fontsize=8, color="0.2")
    fig.tight_layout(rect=(0, 0.27, 1, 0.96))
    paths = [out / "complexity_scaling.png", out / "complexity_scaling.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------- main
def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})


def _read_csv(path: Path) -> list[dict]:
    ints, floats = {"resolution", "params", "activation_bytes", "saved_storages"}, {
        "gmacs", "gmacs_fvcore", "gmacs_meta", "activation_gib", "seconds"}
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            rows.append({k: (int(v) if k in ints else float(v) if k in floats and v != "" else
                             None if k in floats else v) for k, v in r.items()})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated, from: {', '.join(MODELS)} (default: %(default)s)")
    ap.add_argument("--resolutions", default=",".join(map(str, RESOLUTIONS)),
                    help="comma-separated input sides in pixels, multiples of 32 (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: analysis/out)")
    ap.add_argument("--meta-only", action="store_true", help="GMACs from the meta-device count only (no fvcore run)")
    ap.add_argument("--fvcore-max-res-global", type=int, default=320,
                    help="largest R at which fvcore runs global attention at stride 4 (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--replot", action="store_true",
                    help="redraw the figure from the CSV already in --out (no measuring)")
    args = ap.parse_args(argv)

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in keys if k not in MODELS]
    if bad:
        ap.error(f"--models: unknown {', '.join(bad)}; choose from {', '.join(MODELS)}")
    try:
        res_list = sorted({int(r) for r in args.resolutions.split(",") if r.strip()})
    except ValueError:
        ap.error(f"--resolutions: expected integers, got {args.resolutions!r}")
    if not res_list or any(r <= 0 or r % 32 for r in res_list):
        ap.error(f"--resolutions: expected positive multiples of 32, got {args.resolutions!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    if args.replot:
        rows = _read_csv(args.out / "complexity_scaling.csv")
        fits = slopes(rows)
        print("wrote " + ", ".join(str(p) for p in plot(rows, fits, args.out)))
        return 0
    rows = []
    for key in keys:
        e = MODELS[key]
        for res in res_list:
            fv = not args.meta_only and (not e.quadratic or res <= args.fvcore_max_res_global)
            with contextlib.redirect_stdout(sys.stderr):
                r = measure_point(e, res, fvcore=fv)
            rows.append(r)
            print(f"  {key:16s} {res:5d}px  {r['gmacs']:10.3f} GMACs ({r['gmacs_source']})  "
                  f"{r['activation_gib']:9.3f} GiB saved  [{r['seconds']:.1f}s]", file=sys.stderr)
    fits = slopes(rows)
    _write_csv(args.out / "complexity_scaling.csv", rows)
    _write_csv(args.out / "complexity_scaling_slopes.csv", fits)
    written = [args.out / "complexity_scaling.csv", args.out / "complexity_scaling_slopes.csv"]
    if not args.no_plot:
        written += plot(rows, fits, args.out)

    lo, hi = res_list[0], res_list[-1]
    print(f"{'model':16s} {'GMACs@' + str(lo):>11s} {'GMACs@' + str(hi):>11s} {'slope':>6s} {'top':>5s}   "
          f"{'GiB@' + str(lo):>9s} {'GiB@' + str(hi):>9s} {'slope':>6s} {'top':>5s}")
    for f in fits:
        rs = {r["resolution"]: r for r in rows if r["model"] == f["model"]}
        print(f"{f['model']:16s} {rs[lo]['gmacs']:11.3f} {rs[hi]['gmacs']:11.3f} {f['gmacs_slope_fit']:6.2f} "
              f"{f['gmacs_slope_top']:5.2f}   {rs[lo]['activation_gib']:9.3f} {rs[hi]['activation_gib']:9.2f} "
              f"{f['activation_bytes_slope_fit']:6.2f} {f['activation_bytes_slope_top']:5.2f}")
    print("slope: least-squares exponent of R over all resolutions; top: between the two largest")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
