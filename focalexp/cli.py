"""`focalexp <command>`: a thin layer that parses arguments, calls the library and prints.

Exit codes: 0 ok, 1 a run or job failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from .errors import FocalexpError

EXAMPLES = {
    "train": "focalexp train --out runs/demo                      # cpu_small recipe: focalnet_micro on Pathfinder\n"
    "  focalexp train --model focalnet_micro --set model.focal_levels=4 --set train.epochs=2 --out runs/l4\n"
    "  focalexp train run.yaml --set data.root=/data/imagenet --out runs/t_srf\n"
    "  IMAGENET_ROOT=/data/imagenet focalexp train --set recipe=imagenet_paper --model focalnet_t_srf --out runs/in1k",
    "sweep": "focalexp sweep experiments/focal_levels.yaml           # the demo: local when there is no SLURM\n"
    "  focalexp sweep experiments/kernel_sizes.yaml --dry-run\n"
    "  focalexp sweep experiments/imagenet/focal_levels.yaml --set launcher.partition=gpu --dry-run\n"
    "  focalexp sweep experiments/focal_levels.yaml --cluster slurm --set seeds=[0,1,2] --wait\n"
    "  focalexp sweep experiments/focal_levels.yaml --retry-failed",
    "status": "focalexp status sweeps/focal_levels\n  focalexp status sweeps/focal_levels --json",
    "collect": "focalexp collect sweeps/focal_levels\n  focalexp collect sweeps/focal_levels --format csv",
    "report": "focalexp report sweeps/focal_levels\n  focalexp report sweeps/focal_levels --baseline model.focal_levels=2 --ci bootstrap",
    "cancel": "focalexp cancel sweeps/focal_levels\n  focalexp cancel sweeps/focal_levels --run 3f2a9c41d0be --run 77e1b2c3d4f5",
    "models": "focalexp models\n  focalexp models --kind paper --json",
    "viz": "focalexp viz --model focalnet_t_srf --checkpoint focalnet_tiny_srf.pth --what modulator --out mod.png\n"
    "  focalexp viz --checkpoint runs/demo/best.pth --what gates --img-size 64 --out gates.pdf\n"
    "  focalexp viz --model focalnet_t_srf --what erf --levels 1 2 3 4 --out erf.png\n"
    "  focalexp viz --model focalnet_t_srf --what compare --baseline swin_tiny_patch4_window7_224=swin.pth --out cmp.png",
    "detect": "focalexp detect --out runs/det   # Shapes-det, Mask R-CNN over focalnet_micro, on the CPU\n"
    "  focalexp detect --set model.focal_levels=3 --set detector.arch=fcos --out runs/det-fcos\n"
    "  focalexp detect --set recipe=coco_1x --set model.preset=focalnet_t_lrf --out runs/coco-t-lrf   # $COCO_ROOT\n"
    "  focalexp detect --set model.timm=swin_tiny_patch4_window7_224 --set model.img_size=64 --out runs/det-swin",
    "flops": "focalexp flops --model focalnet_t_srf\n  focalexp flops --model focalnet_t_lrf --set focal_levels=4 "
    "--by module --depth 2\n  focalexp flops --model focalnet_b_srf --img-size 384 --json\n"
    "  focalexp flops --detector maskrcnn --model focalnet_t_srf --set model.focal_windows=9   # the paper's Table 6\n"
    "  focalexp flops --detector maskrcnn --timm swin_tiny_patch4_window7_224 --size 1280x800\n"
    "  focalexp flops --config det.yaml --set detector.fpn_channels=128 --json",
    "export": "focalexp export runs/demo/best.pth --to hf --out exports/demo-hf\n"
    "  focalexp export runs/demo/best.pth --to onnx --out exports/demo-onnx\n"
    "  focalexp export focalnet_tiny_srf.pth --model focalnet_t_srf --to timm --out exports/t_srf-timm\n"
    "  focalexp export exports/demo-hf --to torch-export --out exports/demo-pt2 --force",
    "bench": "focalexp bench --model focalnet_t_srf --model swin_tiny_patch4_window7_224 --batch-size 4 --rounds 3\n"
    "  focalexp bench --model focalnet_t_srf --model focalnet_t_lrf --model convnext_tiny --device cuda   # batch 128\n"
    "  focalexp bench --model focalnet_micro --set focal_levels=3 --model resnet18 --img-size 64 --mode both --json\n"
    "  focalexp bench --model focalnet_t_srf --model focalnet_t_srf --rounds 7 --format csv   # A/A: noise floor",
}


STATE_HELP = (
    "done (result.json says so); running; queued; requeued (preempted or timed out, back in the queue); "
    "stopped (ended early with a checkpoint: the same sweep command continues it); killed (a signal, out of "
    "memory, a lost node, or its launcher's process group: the same sweep command resubmits it, at most "
    "launcher.max_retries times in a row); timeout (its time limit: resubmitted the same way); failed (the task "
    "raised: the reason and the log's tail are shown; --retry-failed resubmits it); cancelled; missing (in "
    "the manifest, but no job was ever recorded for it: the launcher stopped before submitting it; the same "
    "sweep command submits it); unknown (the scheduler does not answer)."
)
# commands that never need torch before their work starts: the sweep engine validates thousands of runs,
# and every user error comes back in well under a second (export: flags and --out are checked first)
LIGHT_COMMANDS = ("sweep", "status", "collect", "report", "train", "detect", "export")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (exit 2) instead of usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _fmt_m(n: int | float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def _fmt_g(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ---------------------------------------------------------------------------- models
class _CountingProgress:
    """Progress of a loop over named items: a tqdm bar on a terminal, else one line per item on stderr
    ("counting 3/35 focalnet_t_lrf"), so that a log shows where a long run is."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def __call__(self, i: int, n: int, name: str) -> None:
        if not sys.stderr.isatty():
            print(f"{self.desc} {i}/{n} {name}", file=sys.stderr, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=n, desc=self.desc, leave=False)
        else:
            self.bar.update(1)
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_models(args: argparse.Namespace) -> int:
    from .analysis.presets_table import compare_presets

    progress = None if args.fast else _CountingProgress("counting")
    try:
        records = compare_presets(args.kind, fast=args.fast, progress=progress)
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    rows = []
    for r in records:
        pp = r["paper"] or {}
        rows.append([
            r["name"], r["kind"], str(r["img_size"]), f"{r['params']:,}",
            "-" if pp.get("params_m") is None else f"{pp['params_m']}",
            _fmt_g(r["gmacs"]), "-" if pp.get("gmacs") is None else f"{pp['gmacs']}",
            _fmt_g(r["official_gflops"]), "-" if pp.get("gflops") is None else f"{pp['gflops']}",
        ])
    print(_table(rows, ["model", "kind", "res", "params", "paper M", "GMACs", "ref GMACs", "flops()", "paper G"]))
    print(
        "\nGMACs: fvcore's count, the papers' convention (1 multiply-add = 1; element-wise ops not counted), "
        "computed by the analytic counter that equals it (focalexp.models.macs); "
        "ref GMACs: timm / reference values; flops(): the official analytic formula; paper: as printed. "
        "Heads as the preset builds them (22K models: 21842 classes; the README's large counts use 1000)."
    )
    return 0


# ---------------------------------------------------------------------------- flops
def cmd_flops(args: argparse.Namespace) -> int:
    from .analysis.flops import config_flops, config_flops_table, flops_table, measure_flops
    from .models.presets import get_preset
    from .models.resolve import img_size_override, resolve_model_spec
    from .config import parse_set_args

    if args.detector is not None or args.config is not None:
        return _detector_flops(args)
    for flag, val in (("--timm", args.timm), ("--size", args.size), ("--num-classes", args.num_classes)):
        if val is not None:
            raise FocalexpError(f"{flag}: counts a detector; add --detector ARCH (a classifier is --model NAME)")
    if args.model is None:
        raise FocalexpError("the following arguments are required: --model (or --detector ARCH with a backbone)")
    if args.depth is None:
        args.depth = 2
    if args.depth < 0:
        raise FocalexpError(f"--depth: expected >= 0, got {args.depth}")
    spec = resolve_model_spec(args.model, parse_set_args(args.set))
    size = img_size_override(spec, args.img_size)
    model = None
    if spec.config is not None:  # a FocalNet: counted once per config, then read from the count cache
        rep = config_flops(spec.config, size, name=spec.label, depth=args.depth)
    else:
        model = spec.build(counting=True)
        try:
            rep = measure_flops(model, size, name=spec.label, depth=args.depth, in_chans=spec.in_chans)
        except (AssertionError, RuntimeError, ValueError, IndexError) as e:
            why = (" ".join(str(e).split()) or type(e).__name__)[:160]
            raise FocalexpError(f"--img-size: timm model '{spec.timm_name}' does not take {size}x{size} input "
                                f"({why}); its native size is {spec.img_size}") from None
    paper = None
    if spec.preset is not None and not args.set:
        paper = next((r for r in get_preset(spec.preset).rows if r.img_size == size and r.num_classes is None), None)
    if args.json:
        d = rep.to_dict()
        if paper is not None:
            d["paper"] = {k: v for k, v in paper.__dict__.items() if v not in (None, "")}
        print(json.dumps(d, indent=2))
        return 0
    print(f"{rep.model} @ {size}x{size}, batch 1")
    lines = [
        ["params", f"{rep.params:,}", f"{rep.params / 1e6:.2f} M"],
        ["GMACs", _fmt_g(rep.gmacs), "papers' convention: fvcore, 1 multiply-add = 1, element-wise ops not counted"],
        ["GMACs incl. element-wise", _fmt_g(rep.gmacs_elementwise),
         "+ gating multiplies, GELU, adds, means (1 per element)"],
        ["FlopCounterMode / 2", _fmt_g(rep.flop_counter_gmacs), "torch cross-check: matmul + conv only, no norms"],
    ]
    if rep.official_gflops is not None:
        lines.append(["official flops()", _fmt_g(rep.official_gflops),
                      "microsoft/FocalNet analytic formula (overlapped embedding counted as patch-size kernels)"])
    if paper is not None:
        bits = []
        if paper.params is not None:
            bits.append(f"{paper.params:,} params")
        elif paper.params_m is not None:
            bits.append(f"{paper.params_m} M params")
        if paper.gmacs is not None:
            bits.append(f"{paper.gmacs} GMACs")
        if paper.official_flops_g is not None:
            bits.append(f"flops() {paper.official_flops_g}")
        if paper.paper_gflops is not None:
            bits.append(f"printed {paper.paper_gflops} G")
        lines.append(["reference", "", f"{', '.join(bits)} ({paper.source})"])
    for name, val, note in lines:
        print(f"  {name:<26}{val:>16}   {note}")

    print("\nper stage (GMACs, papers' convention):")
    for m, v in rep.by_stage.items():
        print(f"  {m:<26}{v:>16.4f}")
    if args.by == "module":
        print(f"\nper module (fvcore, depth {args.depth}):")
        print(config_flops_table(spec.config, size, depth=args.depth) if model is None
              else flops_table(model, size, depth=args.depth, in_chans=spec.in_chans))
    elif args.by == "operator":
        print("\nper operator (GMACs; * = not counted in the papers' convention):")
        for op, v in rep.by_operator.items():
            star = "*" if op in rep.not_counted else " "
            print(f"  {star} {op:<24}{v:>16.4f}")
    if rep.not_counted:
        total = sum(rep.not_counted.values())
        ops = ", ".join(f"{k} {v:.4f}" for k, v in list(rep.not_counted.items())[:6])
        print(f"\nnot counted in the papers' convention: {total:.4f} GMACs ({ops})")
    print("unsupported ops (no handle; counted nowhere): " + (
        ", ".join(f"{k} x{v}" for k, v in rep.unsupported.items()) if rep.unsupported else "none"))
    return 0


_ARCH_NAMES = {"maskrcnn": "Mask R-CNN", "fasterrcnn": "Faster R-CNN", "retinanet": "RetinaNet", "fcos": "FCOS"}


def _parse_size(text: str | None) -> tuple[int, int]:
    import re

    from .detection.flops import PAPER_SIZE

    if text is None:
        return PAPER_SIZE
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if m is None:
        raise FocalexpError(f"--size: expected HxW in pixels, height first as mmdet's --shape (e.g. 1280x800), "
                            f"got '{text}'")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def _detector_flops(args: argparse.Namespace) -> int:
    """``focalexp flops --detector``: the whole detector, part by part, beside the paper's row."""
    from .config import parse_set_args
    from .detection.flops import PART_HELP, detector_flops, flops_config
    from .errors import ConfigError

    for flag, bad in (("--img-size", args.img_size is not None), ("--by", args.by is not None),
                      ("--depth", args.depth is not None)):
        if bad:
            raise FocalexpError(f"{flag}: a classifier's option; a detector is counted part by part at --size HxW")
    if args.model is None and args.timm is None and args.config is None:
        raise FocalexpError("--detector: name the backbone: --model PRESET, --timm NAME or --config det.yaml")
    height, width = _parse_size(args.size)
    cfg = flops_config(args.config, model=args.model, timm=args.timm, arch=args.detector,
                       overrides=parse_set_args(args.set))
    classes = 80 if args.num_classes is None else args.num_classes
    try:
        rep = detector_flops(cfg, height, width, classes)
    except ConfigError as e:
        if e.key in ("size", "num_classes"):
            raise ConfigError(e.message, key="--" + e.key.replace("_", "-")) from None
        raise
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    kern = "" if rep.kernels is None else " (kernels " + " | ".join(",".join(map(str, k)) for k in rep.kernels) + ")"
    print(f"{_ARCH_NAMES[rep.arch]} over {rep.backbone_name}{kern}, image {height}x{width} (HxW), "
          f"{rep.num_classes} classes, batch 1")
    digits = 2 if rep.total_gmacs >= 10 else 4
    rows = [[part, f"{rep.gmacs[part]:.{digits}f}", f"{rep.params[part] / 1e6:.{digits}f}",
             PART_HELP[part].format(box_rois=rep.box_rois, mask_rois=rep.mask_rois)] for part in rep.gmacs]
    rows.append(["total", f"{rep.total_gmacs:.{digits}f}", f"{rep.total_params / 1e6:.{digits}f}",
                 "the whole detector"])
    p = rep.paper
    if p is not None:
        same = [height, width] == p["size"] and classes == p["num_classes"]
        rows.append(["paper", f"{p['gflops']:g}", f"{p['params_m']:g}", p["source"]
                     + ("" if same else f"; at {p['size'][0]}x{p['size'][1]}, {p['num_classes']} classes")])
    header = ["part", "GMACs", "params M", "what"]
    w = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    for r in [header, ["-" * n for n in w] + ["-" * 4]] + rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]}")
    if p is not None and p["kernels"] is not None and p["kernels"] != rep.kernels:
        knobs = " ".join(f"--set model.{k}={v}" for k, v in p["knobs"].items())
        print(f"\nnote: the paper's detection backbone has kernels {','.join(map(str, p['kernels'][0]))} per stage "
              f"(the classification kernels + 6); this count has the config's. {knobs} counts the paper's.")
    skipped = ", ".join(f"{k.split('::')[-1]} x{v}" for k, v in rep.not_counted.items()) or "none"
    print("\nGMACs: fvcore, the papers' convention (1 multiply-add = 1; element-wise ops not counted), the parts "
          "of mmdetection's get_flops: heads on fixed RoI counts; RoIAlign, NMS, pre-processing not counted. "
          f"Ops without a handle (not counted): {skipped}.")
    return 0


# ---------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from .analysis.bench import MEM_SHORT, run_bench
    from .config import parse_set_args

    progress = (lambda s: print(f"  {s}", file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    rep = run_bench(
        args.model, overrides=parse_set_args(args.set), batch_size=args.batch_size, img_size=args.img_size,
        precision=args.precision, channels_last=args.channels_last, compile=args.compile, mode=args.mode,
        device=args.device, rounds=args.rounds, warmup=args.warmup, steps_per_round=args.steps,
        threads=args.threads, progress=progress,
    )
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps(rep.to_dict(), indent=2))
        return 0
    if fmt == "csv":
        import csv

        rows = rep.rows()
        w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return 0
    e = rep.env
    print(f"{e['device']} ({e['device_name']}), threads {e['threads']}, {e['precision']}"
          f"{', channels_last' if e['channels_last'] else ''}{', torch.compile' if e['compile'] else ''}, "
          f"batch {e['batch_size']}; torch {e['torch']}, timm {e['timm']}"
          + (f", CUDA {e['cuda']}, TF32 matmul {'on' if e['tf32_matmul'] else 'off'}" if e["cuda"] else ""))
    print(f"{e['rounds']} interleaved rounds x {e['steps_per_round']} step(s) per model, after {e['warmup']} "
          "warm-up step(s)\n")
    kind = MEM_SHORT.get(e["memory_kind"], "n/a")
    rows = []
    for r in rep.results:
        ratio = "1.00x" if r.name == e["baseline"] else f"{r.ratio:.2f}x ({r.ratio_q1:.2f}-{r.ratio_q3:.2f})"
        rows.append([
            r.name, r.mode, str(r.img_size),
            f"{r.median:.1f} [{min(r.images_per_s):.1f}-{max(r.images_per_s):.1f}]", f"{r.step_ms:.1f}",
            "-" if r.peak_delta_mb is None else f"{r.peak_delta_mb:.{1 if r.peak_delta_mb < 10 else 0}f}",
            _fmt_m(r.params), _fmt_g(r.gmacs), ratio,
        ])
    print(_table(rows, ["model", "mode", "res", "img/s median [min-max]", "step ms", f"peak delta MB ({kind})",
                        "params M", "GMACs", "speed ratio"]))
    print(f"\npeak delta MB (peak_delta_mb): {e['memory_meaning']}; what the steps need, not the whole-process "
          f"peak a run's result.json reports.\nGMACs: per image, the papers' convention (fvcore; element-wise ops "
          f"not counted).\nspeed ratio: images/s relative to {e['baseline']}, median (quartiles) of the "
          "round-by-round ratios.")
    for name, err in e["flops_errors"].items():
        print(f"GMACs of {name} not counted: {err}")
    return 0


# ---------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import provenance

    from .fileio import input_file
    from .config import parse_set_args
    from .train.config import check_nproc, load_run_config

    check_nproc(args.nproc)  # flags, files and the config are checked before torch is imported
    if args.resume is not None:
        input_file(args.resume, "--resume")
    cfg = load_run_config(args.config, parse_set_args(args.set), model=args.model)
    out = Path(args.out)
    from .train.loop import RunInterrupted, train

    try:
        result = train(cfg, out, resume=args.resume, nproc=args.nproc, provenance=provenance.origin())
    except RunInterrupted:
        print(f"interrupted: {out / 'last.pth'} holds the state; run the same command again to continue",
              file=sys.stderr)
        return 130
    line = {k: result.get(k) for k in ("status", "top1", "top5", "best_top1", "epochs_done", "train_seconds",
                                       "images_per_s", "params", "gmacs")}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))
    if result.get("status") == "failed":
        print(f"failed: {result.get('reason')}", file=sys.stderr)
        return 1
    if result.get("write_error"):  # a full disk: stopped, the last checkpoint intact; a re-run continues.
        # Exit 2 like any input the user must fix (the promise of the hostile-input table: one line, nothing
        # more written): the disk, not the run, is at fault
        print(f"focalexp train: stopped: {result.get('reason')}", file=sys.stderr)
        return 2
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import provenance
    from .config import parse_set_args
    from .detection.config import load_detect_config
    from .fileio import input_file
    from .train.config import check_nproc

    check_nproc(args.nproc)
    if args.resume is not None:
        input_file(args.resume, "--resume")
    cfg = load_detect_config(args.config, parse_set_args(args.set))
    out = Path(args.out)
    from .detection.trainer import train_detector
    from .train.loop import RunInterrupted

    try:
        result = train_detector(cfg, out, resume=args.resume, nproc=args.nproc, provenance=provenance.origin())
    except RunInterrupted:
        print(f"interrupted: {out / 'last.pth'} holds the state; run the same command again to continue",
              file=sys.stderr)
        return 130
    line = {k: result.get(k) for k in ("status", "box_ap", "box_ap50", "mask_ap", "best_box_ap", "epochs_done",
                                       "train_seconds", "images_per_s", "params", "gmacs")}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items() if v is not None))
    if result.get("status") == "failed":
        print(f"failed: {result.get('reason')}", file=sys.stderr)
        return 1
    if result.get("write_error"):
        print(f"focalexp detect: stopped: {result.get('reason')}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------- sweep
def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=not sys.stderr.isatty(), leave=False)


def _axis_cell(v: Any) -> str:
    from .sweep.collect import axis_cell

    return str(axis_cell(v))


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import parse_set_args
    from .sweep import axis_keys, dry_run, expand, launch, load_spec, preflight
    from .sweep.spec import MAX_RUNS, check_run_count

    overrides = parse_set_args(args.set)
    if args.cluster:
        overrides["launcher.cluster"] = args.cluster
    spec = load_spec(args.spec, overrides)
    sweep_dir = Path(args.dir) if args.dir else Path("sweeps") / spec.name
    check_run_count(spec, None if args.yes else MAX_RUNS)  # within a second, before any run is built
    if args.dry_run:
        return _print_dry_run(dry_run(spec, sweep_dir), axis_keys(spec), args.json)
    which = preflight(spec, sweep_dir, allow_setup=args.allow_setup)
    runs = expand(spec)
    bar = None
    plain = not sys.stderr.isatty()

    def progress(done: int, n: int) -> None:
        nonlocal bar
        if plain:  # a log file or a pipe: one line per finished run
            print(f"sweep {spec.name}: {done}/{n} runs finished", file=sys.stderr, flush=True)
            return
        if bar is None:
            bar = _bar(n, f"sweep {spec.name}")
        bar.n = done
        bar.refresh()

    from .sweep import SweepDir, get_backend

    # the lock first: a second launcher on this dir says who holds it, in one line, before announcing anything
    with SweepDir(sweep_dir).lock(reentrant=True):
        line = get_backend(which).announce(spec, sweep_dir, len(runs))
        if line:
            print(line, file=sys.stderr, flush=True)
        try:
            out = launch(spec, sweep_dir, runs=runs, retry_failed=args.retry_failed, progress=progress,
                         allow_setup=args.allow_setup)
        finally:
            if bar is not None:
                bar.close()
    skipped = ", ".join(f"{len(v)} {k}" for k, v in out.skipped.items())
    print(f"sweep {spec.name}: {len(runs)} runs; submitted {len(out.submitted)} ({out.cluster})"
          + (f"; left alone: {skipped}" if skipped else "") + f"; dir {sweep_dir}")
    backend = get_backend(out.cluster)
    queued = backend.returns_at_once  # a scheduler runs them: follow only with --wait
    line = backend.submitted(list(out.job_ids), sweep_dir) if queued else None
    if line:
        print(line)
    if queued and args.wait:
        _follow(sweep_dir)
    if not queued or args.wait:
        return _summarize_sweep(sweep_dir)
    return 0


def _print_dry_run(plan, axes: list[str], as_json: bool) -> int:
    if as_json:
        print(json.dumps(plan.to_dict(), indent=1))
        return 0
    spec, t = plan.spec, plan.totals
    any_gpu = t["gpu_hours"] is not None
    rows = []
    for r in plan.runs:
        e = plan.estimates[r.run_id]
        row = [r.run_id] + [_axis_cell(r.axes[a]) for a in axes] + [
            str(r.seed), f"{e['gmacs']:.4g}", str(e.get("images") or "?"),
            f"{e['train_pmacs']:.3g}" if e.get("train_pmacs") is not None else "-"]
        if any_gpu:
            row.append(f"{e['gpu_hours']:.3g}" if "gpu_hours" in e else "-")
        if plan.existing:
            row.append(plan.existing.get(r.run_id, "new"))
        rows.append(row)
    header = ["run"] + axes + ["seed", "GMACs/img", "img/epoch", "train PMACs"] + (["GPU-h"] if any_gpu else []) \
        + (["state"] if plan.existing else [])
    print(f"sweep {spec.name}: {len(plan.runs)} runs ({spec.task}) -> {plan.backend} ({plan.backend_reason}), "
          f"dir {plan.sweep_dir} (dry run: nothing written)")
    if spec.description:
        print(f"  {spec.description.strip()}")
    print(_table(rows, header))
    if plan.existing:
        from collections import Counter

        c = Counter(plan.existing.get(r.run_id, "new") for r in plan.runs)
        again = sum(v for k, v in c.items() if k in ("new", "missing", "stopped", "killed", "timeout")) - len(plan.held)
        print(f"in {plan.sweep_dir}: " + ", ".join(f"{v} {k}" for k, v in c.items())
              + f"; the sweep would submit {again} (failed/cancelled"
              + (f" and {len(plan.held)} held killed" if plan.held else "") + " ones with --retry-failed)")
    if t["train_pmacs"] is not None:
        line = f"compute: {t['train_pmacs']:.4g} PMACs of training (3 x forward GMACs x images x epochs)"
        if any_gpu:
            line += (f" = {t['gpu_hours']:.4g} GPU-hours at {t['gpu_tflops']:g} sustained TFLOP/s per GPU (set "
                     f"estimate.gpu_tflops); {t['hours_per_run']:.3g} h wall per run on its {t['gpus_per_run']} GPU(s)")
        else:
            line += "; CPU runs (launcher.gpus_per_node is 0): no GPU-hours"
        print(line)
    return 0


def _follow(sweep_dir) -> None:
    from .sweep import SETTLED, wait

    bar = None

    def show(states) -> None:
        nonlocal bar
        ended = sum(s.state in SETTLED for s in states)
        line = " ".join(f"{k}={v}" for k, v in _counts(states).items())
        if not sys.stderr.isatty():
            print(f"waiting: {ended}/{len(states)} runs ended ({line})", file=sys.stderr, flush=True)
            return
        if bar is None:
            bar = _bar(len(states), "waiting")
        bar.n = ended
        bar.set_postfix_str(line)
        bar.refresh()

    wait(sweep_dir, on_poll=show)
    if bar is not None:
        bar.close()


def _counts(states) -> dict[str, int]:
    from .sweep import counts

    return counts(states)


def _killed_line(states, sweep_dir) -> str | None:
    """One line for the killed and timed-out runs of a sweep: whether the same command resubmits them."""
    from .sweep import SweepDir
    from .sweep.status import RETRIED, max_retries, retry_hold

    ended = [s for s in states if s.state in RETRIED]
    if not ended:
        return None
    bound = max_retries(SweepDir(sweep_dir))
    again = [s for s in ended if retry_hold(s, bound) is None]
    held = len(ended) - len(again)
    words = " or ".join(w for w, k in (("killed", "killed"), ("timed out", "timeout"))
                        if any(s.state == k for s in ended))
    n = len(ended)
    line, them = f"{n} run{'s were' if n != 1 else ' was'} {words}", "them" if n != 1 else "it"
    if again and not held:
        return line + f"; the same command resubmits {them}"
    if not again:
        return line + f"; the same command leaves {them} (see the reasons); --retry-failed resubmits {them}"
    return line + f"; the same command resubmits {len(again)}, --retry-failed the other {held}"


def _summarize_sweep(sweep_dir) -> int:
    """After a sweep ended: its status line, the report table; exit 0 when every run is done, else 1 (a
    line says whether the same command resubmits what was killed)."""
    from .sweep import report, status

    states = status(sweep_dir)
    files = report(sweep_dir)
    print((files["markdown"]).read_text().strip())
    print(f"\nreport: {', '.join(str(p) for p in files.values())}")
    bad = [s for s in states if s.state in ("failed", "cancelled", "killed", "timeout")]
    for s in bad:
        print(f"{s.state}: run {s.run_id} ({', '.join(f'{k}={v}' for k, v in s.axes.items())}): {s.reason}",
              file=sys.stderr)
    print("status: " + ", ".join(f"{v} {k}" for k, v in _counts(states).items()))
    line = _killed_line(states, sweep_dir)
    if line:
        print(line)
    return 1 if bad else 0


def cmd_status(args: argparse.Namespace) -> int:
    from .sweep import SweepDir, status
    from .sweep.collect import mixed_code

    states = status(args.dir)
    warning = mixed_code(args.dir)
    if warning:
        print(warning, file=sys.stderr)
    axes = SweepDir(args.dir).manifest()["axes"]
    if args.json:
        print(json.dumps([{k: v for k, v in s.to_dict().items() if k != "result"} for s in states], indent=1))
    else:
        # the score column: top-1 of classifiers, box AP of detectors (whichever the results hold)
        score = "box_ap" if any("box_ap" in (s.result or {}) for s in states) else "top1"
        rows = [[s.run_id] + [_axis_cell(s.axes.get(a)) for a in axes] + [
            str(s.seed), s.state, s.job_id or "-", str(s.attempts), _fmt_g((s.result or {}).get(score), 2)
            if (s.result or {}).get(score) is not None else "-", (s.reason or "")[:100]] for s in states]
        print(_table(rows, ["run"] + axes + ["seed", "state", "job", "tries",
                                             "box AP" if score == "box_ap" else "top-1", "reason"]))
        for s in states:
            if s.state in ("failed", "cancelled", "killed", "timeout") and s.log_tail:
                print(f"\n--- {s.run_id} ({s.state}) {s.log}:")
                print("\n".join("  " + ln for ln in s.log_tail))
        print("\n" + ", ".join(f"{v} {k}" for k, v in _counts(states).items()))
        line = _killed_line(states, args.dir)
        if line:
            print(line)
        from pathlib import Path

        from .sweep import SETTLED

        ended = states and all(s.state in SETTLED for s in states)
        if ended and not (Path(args.dir) / "report" / "report.md").exists():
            print(f"every run has ended: `focalexp report {args.dir}` writes the tables and figures")
    return 1 if any(s.state == "failed" for s in states) else 0


def cmd_collect(args: argparse.Namespace) -> int:
    from .sweep import collect

    df = collect(args.dir)
    if args.format == "csv":
        print(df.to_csv(index=False), end="")
    elif args.format == "json":
        print(df.to_json(orient="records", indent=1))
    else:
        import pandas as pd

        cols = [c for c in ["run_id", *df.attrs["axes"], "seed", "status", "top1", "top5", "box_ap", "mask_ap",
                            "box_ap_context", "params", "gmacs",
                            "train_seconds", "images_per_s"] if c in df.columns]
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            print(df[cols].to_string(index=False))
        print(f"\nwrote {args.dir}/results.csv and results.parquet ({len(df)} rows, {len(df.columns)} columns)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .sweep import report
    from .sweep.reporting import parse_baseline

    files = report(args.dir, formats=tuple(args.fig_format or ["png"]), ci=args.ci,
                   baseline=parse_baseline(args.baseline))
    print(files["markdown"].read_text().strip())
    print("\nwrote " + ", ".join(str(p) for p in files.values()))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .sweep import cancel

    out = cancel(args.dir, args.run)
    left = ", ".join(f"{len(v)} {k}" for k, v in out.skipped.items())
    print(f"cancelled {len(out.cancelled)} run(s)" + (f": {' '.join(out.cancelled)}" if out.cancelled else "")
          + (f"; left alone: {left}" if left else "")
          + (f"; no job left to stop (ended meanwhile?): {' '.join(out.missed)}" if out.missed else ""))
    return 0


# ---------------------------------------------------------------------------- viz
def cmd_viz(args: argparse.Namespace) -> int:
    from .analysis.viz import build_focalnet, check_request, render
    from .config import parse_set_args

    out = check_request(args.what, args.out, args.levels)  # before building the model
    vm = build_focalnet(args.model, args.checkpoint, parse_set_args(args.set))
    path = render(args.what, vm, out=out, images=args.image, img_size=args.img_size, blocks=args.block,
                  levels=args.levels, baselines=args.baseline, shared_scale=args.shared_scale)
    print(f"{args.what}: {vm.caption} -> {path}")
    return 0


# ---------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from .config import parse_set_args
    from .models.export import export_checkpoint

    overrides = {k[len("model."):] if k.startswith("model.") else k: v for k, v in parse_set_args(args.set).items()}
    res = export_checkpoint(args.checkpoint, args.to, args.out, model=args.model, overrides=overrides,
                            force=args.force, check=not args.no_check)
    if args.json:
        print(json.dumps({"out": str(res.out), "to": res.to, "files": res.files, "max_abs_diff": res.max_abs_diff,
                          "config": res.config.to_dict(), "results": res.results}, indent=2))
        return 0
    check = "not checked" if res.max_abs_diff is None else f"read back, max |logits difference| {res.max_abs_diff:.3g}"
    print(f"exported {args.checkpoint} -> {res.out} ({res.to}): {', '.join(res.files)}; {check}")
    return 0


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="focalexp", description="Focal Modulation Network experiments and ablations.")
    parser.add_argument("--version", action="version", version=f"focalexp {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(  # argparse %-formats a command's help line ("95% interval" broke focalexp --help)
            name, help=help_.replace("%", "%%"), description=help_, epilog="examples:\n  " + EXAMPLES.get(name, ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=fn)
        return p

    p = add("models", cmd_models, "List every preset with its parameters and GMACs beside the paper's numbers.")
    p.add_argument("--kind", choices=["released", "paper", "toolkit"],
                   help="only released (official weights), paper-only or toolkit (CPU-sized) presets")
    p.add_argument("--fast", action="store_true", help="skip fvcore (params and the analytic flops() only)")
    p.add_argument("--json", action="store_true", help="print a JSON list")

    p = add("flops", cmd_flops, "Count parameters and FLOPs of a model (fvcore, the papers' convention, and more).")
    p.add_argument("--model", help="a focalexp preset or alias, or a timm model name (with --detector: the backbone)")
    p.add_argument("--img-size", type=int, help="input resolution (default: the model's native one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config knob (repeatable); with --detector a dotted key of the detection config, "
                        "e.g. model.focal_windows=9 or detector.fpn_channels=128")
    p.add_argument("--by", choices=["module", "operator"], help="add a per-module or per-operator breakdown")
    p.add_argument("--depth", type=int, help="module depth of the breakdown (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from .detection.config import ARCHS

    p.add_argument("--detector", choices=ARCHS,
                   help="count this whole detector (backbone, FPN, heads) as mmdetection's get_flops does, on the "
                        "coco_1x recipe unless --config")
    p.add_argument("--timm", metavar="NAME", help="--detector: a timm backbone, e.g. swin_tiny_patch4_window7_224")
    p.add_argument("--config", metavar="YAML", help="--detector: a detection run config (its recipe, backbone, heads)")
    p.add_argument("--size", metavar="HxW", help="--detector: image height x width (default 1280x800, the papers')")
    p.add_argument("--num-classes", type=int, help="--detector: object classes (default 80, COCO's)")

    p = add("bench", cmd_bench, "Throughput (images/s), step time, peak memory, params and GMACs of models side by "
            "side: interleaved rounds in one process, ratios to the first model.")
    p.add_argument("--model", action="append", required=True, metavar="NAME",
                   help="a focalexp preset or alias, or a timm model name (repeatable; the first is the baseline)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config knob of every focalexp preset model (repeatable)")
    p.add_argument("--batch-size", type=int, help="default: 128 on cuda (the papers'), 16 on cpu")
    p.add_argument("--img-size", type=int, help="input resolution (default: each model's native one)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="bf16/fp16: autocast, weights in fp32 like timm's --amp (default fp32, the papers'; on a "
                        "CPU without AVX512-BF16/AMX both are emulated and slow)")
    p.add_argument("--channels-last", action="store_true", help="channels-last model and input")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model (one compiling step before the warm-up, so peak memory then "
                        "leaves out what that step keeps, e.g. AdamW's state)")
    p.add_argument("--mode", choices=["infer", "train", "both"], default="infer",
                   help="inference (the papers' throughput; default), a training step (fwd+bwd+AdamW), or both")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per model (default 5)")
    p.add_argument("--steps", type=int, help="steps per model per round (default: 10 on cuda, 1 on cpu)")
    p.add_argument("--warmup", type=int, help="warm-up steps per model, where peak memory is measured "
                                                "(default: 10 on cuda, timm's; 2 on cpu)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object (env + results)")
    out.add_argument("--format", choices=["table", "csv", "json"], default="table",
                     help="table (default), csv (one row per model x mode) or json")

    p = add("train", cmd_train, "Train and evaluate one model (resumes automatically from DIR/last.pth).")
    p.add_argument("config", nargs="?", help="run config YAML (sections: recipe, seed, model, data, train, eval)")
    p.add_argument("--model", help="preset to train (replaces the config's model section)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a dotted key, e.g. train.epochs=2 or model.focal_levels=3 (repeatable)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", metavar="PATH", help="continue from this last.pth (default: DIR/last.pth if present)")
    p.add_argument("--nproc", type=int, default=1, help="local processes (DDP: gloo on CPU, nccl on GPU)")
    p.add_argument("--json", action="store_true", help="print result.json")

    p = add("detect", cmd_detect, "Train and evaluate one detector (torchvision Mask R-CNN, Faster R-CNN, RetinaNet "
            "or FCOS over a FocalNet or timm backbone; COCOeval); resumes from DIR/last.pth.")
    p.add_argument("config", nargs="?", help="detection run config YAML (sections: recipe, seed, model, detector, "
                   "data, train, eval); none: the det_cpu_small recipe (Shapes-det on the CPU)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a dotted key, e.g. model.focal_levels=3, detector.arch=fcos, recipe=coco_1x "
                        "(repeatable)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", metavar="PATH", help="continue from this last.pth (default: DIR/last.pth if present)")
    p.add_argument("--nproc", type=int, default=1, help="local processes (DDP: gloo on CPU, nccl on GPU)")
    p.add_argument("--json", action="store_true", help="print result.json")

    p = add("sweep", cmd_sweep, "Run a grid of experiments from a YAML spec (SLURM job arrays, or local processes).")
    p.add_argument("spec", help="sweep spec YAML (name, base, grid, zip, exclude, seeds, task, launcher)")
    p.add_argument("--dir", help="sweep dir (default: sweeps/NAME)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the runs and the compute; write nothing")
    from .sweep.backends import AUTO, backend_names, cluster_help

    p.add_argument("--cluster", choices=[AUTO, *backend_names()], help=cluster_help())
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override the spec: base.train.epochs=1, grid.model.focal_levels=[0,4], seeds=[0,1], "
                        "launcher.partition=gpu (repeatable)")
    p.add_argument("--retry-failed", action="store_true",
                   help="also resubmit failed and cancelled runs, and killed or timed-out ones past "
                   "launcher.max_retries (their count starts again)")
    p.add_argument("--wait", action="store_true", help="SLURM: follow the sweep until every run ended")
    p.add_argument("--json", action="store_true", help="--dry-run: print the runs as JSON")
    p.add_argument("--yes", action="store_true", help=f"go ahead with more than {10_000:,} runs")
    p.add_argument("--allow-setup", action="store_true",
                   help="run the spec's launcher.setup shell lines before each job (refused without this flag)")

    p = add("status", cmd_status, "Where every run of a sweep stands (exit 1 if any failed). States: " + STATE_HELP)
    p.add_argument("dir", help="sweep dir")
    p.add_argument("--json", action="store_true", help="print a JSON list")

    p = add("collect", cmd_collect, "One row per run (axes, then metrics) to results.csv / results.parquet.")
    p.add_argument("dir", help="sweep dir")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="what to print: table (default), csv or json; results.csv and results.parquet are always written")

    p = add("report", cmd_report, "Paper-style tables (markdown, LaTeX): per arm the mean and 95% interval over "
            "seeds; against a baseline arm the paired difference (interval, p-value, seeds for 80% power) and "
            "the paper's numbers beside ours; seaborn figures with intervals.")
    p.add_argument("dir", help="sweep dir")
    p.add_argument("--ci", choices=["t", "bootstrap"], default="t",
                   help="95%% interval over seeds: t (scipy.stats.t, default) or bootstrap (percentile)")
    p.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                   help="the arm to compare with, e.g. model.focal_levels=2 (repeatable; overrides the spec's "
                        "report.baseline)")
    p.add_argument("--fig-format", action="append", choices=["png", "pdf", "svg"], default=None,
                   help="figure format (repeatable; default png)")
    p = add("cancel", cmd_cancel, "Stop the queued and running jobs of a sweep: SLURM scancels them, local runs save "
            "a checkpoint and stop (a local launcher still at work starts the runs it has not started yet; Ctrl-C "
            "stops it). They then read 'cancelled'; `focalexp sweep SPEC --retry-failed` resubmits them.")
    p.add_argument("dir", help="sweep dir")
    p.add_argument("--run", action="append", metavar="RUN_ID", help="only this run (repeatable; default: every run)")
    p = add("export", cmd_export, "Save a checkpoint in timm's, Hugging Face's, the official or focalexp's layout, or "
            "as an ONNX / torch.export program, into a folder with a model card (README.md); the written files are "
            "read back and checked against the model.")
    p.add_argument("checkpoint", help="weights: a focalexp checkpoint (carries its config), a Hugging Face "
                                      "save_pretrained folder, or an official/timm file with --model")
    p.add_argument("--to", required=True, metavar="FORMAT",
                   help="focalexp, official, timm, hf, torch-export or onnx (or an exporter registered with "
                        "focalexp.models.export.register_exporter)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty; written all at once)")
    p.add_argument("--model", help="the architecture (preset) for a checkpoint that carries no config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config knob (repeatable)")
    p.add_argument("--force", action="store_true", help="replace --out if an earlier export wrote it")
    p.add_argument("--no-check", action="store_true", help="skip reading the export back and comparing logits")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("viz", cmd_viz, "Figures of what the model looks at: modulator, gates, contexts, kernels, ERF, vs Swin/ViT.")
    p.add_argument("--model", help="a focalexp preset (or a timm FocalNet / baseline name); optional with a "
                                   "focalexp --checkpoint, which carries its config")
    p.add_argument("--checkpoint", metavar="PATH", help="weights: focalexp best.pth/last.pth, official or timm layout")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config knob (repeatable)")
    p.add_argument("--what", required=True, choices=["modulator", "gates", "context", "kernels", "erf", "compare"],
                   help="which maps (see focalexp.analysis.viz)")
    p.add_argument("--image", action="append", metavar="PATH",
                   help="an image (repeatable); default: the photographs shipped with focalexp")
    p.add_argument("--img-size", type=int, default=224, help="square crop the images are resized to (default 224)")
    p.add_argument("--block", action="append", metavar="NAME|STAGE",
                   help="block name (stages.3.blocks.1) or stage index (-1 = last); default: last block of "
                        "each stage (modulator) or of the last stage (gates, context)")
    p.add_argument("--levels", type=int, nargs="+", metavar="L", help="erf: compare these focal levels")
    p.add_argument("--baseline", action="append", metavar="TIMM_NAME[=PATH]",
                   help="erf/compare: timm baselines (default for compare: swin_tiny_patch4_window7_224, "
                        "vit_small_patch16_224), optionally with local weights")
    p.add_argument("--shared-scale", action="store_true", help="one colour scale for all maps of the figure")
    p.add_argument("--out", required=True, help="figure path (.png, .pdf or .svg)")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _quiet_library_warnings() -> None:
    import warnings

    # torch deprecates TorchScript, which fvcore's tracer (and timm) still use: not the user's concern
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    import focalexp

    light_before = focalexp._LIGHT_IMPORTS
    if args.command in LIGHT_COMMANDS:
        focalexp.light_imports()
    try:
        return int(args.func(args) or 0)
    except FocalexpError as e:
        sys.stderr.write(f"focalexp {args.command}: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write(f"focalexp {args.command}: error: out of memory\n")
        return 1
    except Exception as e:  # noqa: BLE001 - a bug or an environment problem: one line, the trace on request
        import os

        if os.environ.get("FOCALEXP_DEBUG"):
            raise
        what = " ".join(str(e).split())[:300]
        sys.stderr.write(f"focalexp {args.command}: internal error: {type(e).__name__}: {what} "
                         "(FOCALEXP_DEBUG=1 shows the traceback; please report it)\n")
        return 1
    finally:  # main() called in-process (a notebook, the tests): later imports are eager again
        focalexp._LIGHT_IMPORTS = light_before


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
