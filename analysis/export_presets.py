"""torch.export and ONNX export of every preset, each checked against eager (``focalexp export``'s own check).

Usage: ``python analysis/export_presets.py [torch-export] [onnx] [--shallow] [--only PRESET ...]``. Random weights, inputs at twice
the network stride. ``--shallow`` caps every stage at 2 blocks (a block only repeats; the second one keeps
window attention's shifted block) and exports each distinct set of ops once (S and B differ from T only in
depth and width); without it every preset is traced at full depth (minutes each on a CPU).
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from focalexp.models.export import export_model
from focalexp.models.focalnet import FocalNet, skip_weight_init
from focalexp.models.presets import list_presets


def main(argv: list[str]) -> int:
    only = argv[argv.index("--only") + 1:] if "--only" in argv else None
    argv = argv[:argv.index("--only")] if only else argv
    fmts = [a for a in argv if not a.startswith("--")] or ["torch-export", "onnx"]
    shallow = "--shallow" in argv
    seen: dict[str, str] = {}
    failed = done = 0
    for p in list_presets():
        if only and p.name not in only:
            continue
        cfg = p.config.replace(img_size=p.config.stride * 2)
        if shallow:
            cfg = cfg.replace(depths=[min(d, 2) for d in cfg.depths])
            key = str(cfg.replace(embed_dim=cfg.head_dim * 2, drop_path_rate=0.0, num_classes=10).to_dict())
            if key in seen:
                print(f"{p.name:34s} same ops as {seen[key]}", flush=True)
                continue
            seen[key] = p.name
        with torch.device("meta"), skip_weight_init():  # random weights without the (slow) init
            m = FocalNet(cfg)
        m = m.to_empty(device="cpu")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for t in m.parameters():
                t.copy_(torch.randn(t.shape, generator=g) * 0.02)
        for to in fmts:
            t0 = time.time()
            with tempfile.TemporaryDirectory() as d:
                try:
                    diff = f"max |diff| {export_model(m.eval(), to, f'{d}/out').max_abs_diff:.2g}"
                except Exception as e:  # noqa: BLE001 - a report, not a test
                    failed += 1
                    diff = f"FAILED {type(e).__name__}: {' '.join(str(e).split())[:150]}"
            done += 1
            print(f"{p.name:34s} {to:13s} {diff}  ({time.time() - t0:.1f} s)", flush=True)
    print(f"{done} exports, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
