"""The sweep's ``measure`` task: params, GMACs and throughput of one model config, no training."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml


def measure_run(config: Mapping[str, Any], out: str, *, batch_size: int = 16, rounds: int = 5, warmup: int = 2,
                mode: str = "infer", threads: int | None = None) -> dict:
    """Measure the model of run config ``config`` on this machine's CPU (or GPU if present); writes
    ``out/result.json`` (atomically) and returns it."""
    from ..models.factory import resolve_config
    from ..models.focalnet import FocalNet
    from ..train.config import resolve_run_config
    from ..train.loop import atomic_write_text, tune_cpu_allocator, write_json
    from .bench import interleaved, make_step
    from .flops import count_params, measure_flops, model_for_counting

    cfg = resolve_run_config(config, check_data_present=False)
    mcfg = resolve_config(cfg.model)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        tune_cpu_allocator()
        if threads:
            torch.set_num_threads(threads)
    t0 = time.perf_counter()
    flops = measure_flops(model_for_counting(mcfg), mcfg.img_size, cross_check=False)
    torch.manual_seed(cfg.seed)
    model = FocalNet(mcfg).to(device).to(memory_format=torch.channels_last)
    result: dict[str, Any] = {
        "status": "done", "model": cfg.model.get("preset"), "img_size": mcfg.img_size,
        "params": count_params(model), "gmacs": flops.gmacs, "gmacs_elementwise": flops.gmacs_elementwise,
        "device": str(device), "threads": torch.get_num_threads(), "batch_size": batch_size,
    }
    modes = ["infer", "train"] if mode == "both" else [mode]
    for m in modes:
        x = torch.randn(batch_size, mcfg.in_chans, mcfg.img_size, mcfg.img_size, device=device)
        x = x.to(memory_format=torch.channels_last)
        res = interleaved({"m": make_step(model, x, m)}, batch_size=batch_size, img_size=mcfg.img_size, mode=m,
                          device=device, warmup=warmup, rounds=rounds)["m"]
        key = "images_per_s" if m == "infer" else "train_images_per_s"
        result[key] = res.median
        result[key.replace("images_per_s", "step_ms")] = res.step_ms
    result["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
                                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["seconds"] = time.perf_counter() - t0
    atomic_write_text(outp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(outp / "result.json", result)
    return result
