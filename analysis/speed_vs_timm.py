"""focalexp's FocalNet against timm's, same weights and same input, interleaved in one process.

    python analysis/speed_vs_timm.py                       # T-SRF, CPU, 2 threads, batch 16, 224
    python analysis/speed_vs_timm.py --model focalnet_t_lrf --threads 2 --rounds 7

Prints images/s (median, min-max over rounds) for each model and mode, and the speed ratio ours/timm as
the median of round-by-round ratios (each round times one step of each model back to back, in
alternating order, so slow drifts of a shared machine cancel). Peak memory is measured during each model's
warm-up: the allocator peak on CUDA, the peak-RSS delta on CPU (see focalexp.analysis.memory.PeakMemory).
For any models, not only a preset against its timm twin, use `focalexp bench`.
"""

from __future__ import annotations

import argparse
import json
import sys

import timm
import torch

from focalexp.analysis.memory import MEM_SHORT
from focalexp.analysis.timing import interleaved, make_step, paired_ratio
from focalexp.models import create_model, get_preset
from focalexp.models.checkpoint import load_state_into


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="focalnet_t_srf", help="a released preset that timm also has")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--channels-last", action="store_true", help="feed timm a channels-last input")
    ap.add_argument("--mode", default="both", choices=["infer", "train", "both"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=1, help="steps per round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    preset = get_preset(args.model)
    if preset.timm_name is None:
        ap.error(f"{args.model} has no timm counterpart")
    torch.manual_seed(0)
    # same architecture and the same stochastic depth as the preset (timm's default would be 0.1)
    ref = timm.create_model(preset.timm_name, num_classes=preset.config.num_classes or 1000,
                            drop_path_rate=preset.config.drop_path_rate).to(device)
    ours = create_model(args.model, num_classes=preset.config.num_classes or 1000).to(device)
    load_state_into(ours, ref.state_dict())
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    x_ref = x.contiguous(memory_format=torch.channels_last) if args.channels_last else x
    with torch.inference_mode():
        diff = (ours.eval()(x[:2]) - ref.eval()(x_ref[:2])).abs().max().item()

    modes = ["infer", "train"] if args.mode == "both" else [args.mode]
    out = {"model": args.model, "device": str(device), "threads": torch.get_num_threads(),
           "batch_size": args.batch_size, "img_size": args.img_size, "precision": args.precision,
           "torch": torch.__version__, "timm": timm.__version__, "max_abs_logit_diff": diff, "modes": {}}
    for mode in modes:
        res = interleaved(
            {"focalexp": make_step(ours, x, mode, precision=args.precision),
             "timm": make_step(ref, x_ref, mode, precision=args.precision)},
            batch_size=args.batch_size, img_size=args.img_size, mode=mode, device=device,
            rounds=args.rounds, steps_per_round=args.steps,
            progress=lambda s: print(f"  {mode}: {s}", file=sys.stderr),
        )
        out["modes"][mode] = {k: v.to_dict() for k, v in res.items()}
        med, lo, hi = paired_ratio(res["focalexp"], res["timm"])
        out["modes"][mode]["ratio"] = med
        out["modes"][mode]["ratio_iqr"] = [lo, hi]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.model} vs timm {preset.timm_name}: {device}, {out['threads']} threads, batch {args.batch_size}, "
          f"{args.img_size}px, {args.precision}; torch {torch.__version__}, timm {timm.__version__}; "
          f"max |logit diff| {diff:.1e}")
    for mode, r in out["modes"].items():
        for name in ("focalexp", "timm"):
            d = r[name]
            print(f"  {mode:5s} {name:9s} {d['median']:8.1f} img/s  (min {d['min']:.1f}, max {d['max']:.1f})  "
                  f"step {d['step_ms']:7.1f} ms" + (f"  peak delta {d['peak_delta_mb']:.0f} MB ({MEM_SHORT[d['mem_kind']]})"
                     if d["peak_delta_mb"] is not None else ""))
        print(f"  {mode:5s} speed ours/timm: {r['ratio']:.2f}x (median of {args.rounds} paired rounds; "
              f"quartiles {r['ratio_iqr'][0]:.2f}-{r['ratio_iqr'][1]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
