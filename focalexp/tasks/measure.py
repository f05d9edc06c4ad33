"""The ``measure`` task: parameters, GMACs and throughput of one model config per run; no training."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..config import content_hash, opt, to_plain
from ..errors import ConfigError
from . import register_task
from .train import RunConfigTask


@dataclass
class MeasureConfig:
    batch_size: int = opt(16, "images per step for throughput", min=1)
    rounds: int = opt(5, "timed rounds (median reported)", min=1)
    warmup: int = opt(2, "untimed steps first", min=0)
    mode: str = opt("infer", "throughput of inference, a training step, or both", choices=("infer", "train", "both"))
    threads: Optional[int] = opt(None, "torch CPU threads (default: launcher.cpus_per_task or torch's choice)", min=1)


@register_task
class MeasureTask(RunConfigTask):
    name = "measure"
    description = "params, GMACs, throughput of each model (no training)"
    options = MeasureConfig
    seeded = False
    needs_data = False

    def run_id(self, config, options) -> str:
        return content_hash({"task": "measure", "model": config.to_dict()["model"], "measure": to_plain(options)})

    def estimate(self, config, options, estimate) -> dict[str, Any]:
        from .train import model_gmacs

        return {"gmacs": model_gmacs(config.model), "images": None}

    def uses_gpu(self, config, launcher) -> bool:
        return bool(launcher.gpus_per_node)

    def settings(self, launcher, options) -> dict[str, Any]:
        s = to_plain(options)
        s["threads"] = s.get("threads") or launcher.cpus_per_task
        return s

    def run(self, config, run_dir: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        return measure(config, run_dir, **dict(settings))


def measure(cfg, out: str, *, batch_size: int = 16, rounds: int = 5, warmup: int = 2, mode: str = "infer",
            threads: int | None = None) -> dict[str, Any]:
    """Measure the model of the resolved run config ``cfg`` on this machine's CPU (or GPU if present);
    writes ``out/config.yaml`` and ``out/result.json`` (atomically) and returns the result."""
    import torch
    import yaml

    from ..analysis.bench import interleaved, make_step
    from ..analysis.flops import count_params, measure_flops, model_for_counting
    from ..fileio import atomic_write_text
    from ..models.focalnet import FocalNet
    from ..models.presets import resolve_config
    from ..train.loop import process_peak_memory_mb, tune_cpu_allocator, write_json

    if mode not in ("infer", "train", "both"):
        raise ConfigError(f"unknown mode {mode!r}; allowed: infer, train, both", key="measure.mode")
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
        "params": count_params(model), "gmacs": flops.gmacs,
        "gmacs_elementwise": flops.gmacs_elementwise, "device": str(device), "threads": torch.get_num_threads(),
        "batch_size": batch_size,
    }
    for m in (["infer", "train"] if mode == "both" else [mode]):
        x = torch.randn(batch_size, mcfg.in_chans, mcfg.img_size, mcfg.img_size, device=device)
        x = x.to(memory_format=torch.channels_last)
        res = interleaved({"m": make_step(model, x, m)}, batch_size=batch_size, img_size=mcfg.img_size, mode=m,
                          device=device, warmup=warmup, rounds=rounds)["m"]
        key = "images_per_s" if m == "infer" else "train_images_per_s"
        result[key] = res.median
        result[key.replace("images_per_s", "step_ms")] = res.step_ms
    result["peak_memory_mb"] = process_peak_memory_mb(device)
    result["seconds"] = time.perf_counter() - t0
    atomic_write_text(outp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    write_json(outp / "result.json", result)
    return result
