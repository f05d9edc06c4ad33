"""``focalexp bench``: throughput, step time, peak memory, params and GMACs of models side by side.

:func:`run_bench` puts it together for any focalexp presets and timm models: resolve and validate
everything first, build, count params and GMACs, time them interleaved per mode (:mod:`.timing`), measure
each model's peak memory during its warm-up (:mod:`.memory`: ``peak_delta_mb``, the peak *above* what the
process held before the warm-up, weights excluded; not the whole-process peak a run's ``result.json``
reports as ``peak_memory_mb``), and return a :class:`BenchReport`.

The timing and memory names that used to live here (``BenchResult``, ``interleaved``, ``make_step``,
``paired_ratio``, ``PeakMemory``, ``MEM_*``, ``rss_peak_available``) are re-exported.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import ConfigError
from .memory import MEM_CUDA, MEM_MEANING, MEM_NONE, MEM_RSS, MEM_SHORT, PeakMemory, rss_peak_available, sync
from .timing import MODES, PRECISIONS, BenchResult, interleaved, make_step, paired_ratio

__all__ = [
    "run_bench", "BenchReport", "DEFAULTS",
    # re-exported from .timing and .memory
    "MODES", "PRECISIONS", "BenchResult", "interleaved", "make_step", "paired_ratio",
    "MEM_CUDA", "MEM_RSS", "MEM_NONE", "MEM_MEANING", "MEM_SHORT", "PeakMemory", "rss_peak_available",
]

# defaults per device type: CUDA follows the papers (batch 128) and timm (10 warm-up steps); a CPU step at
# batch 128 and 224 px takes tens of seconds, so CPU defaults are small
DEFAULTS = {
    "cuda": {"batch_size": 128, "warmup": 10, "steps_per_round": 10},
    "cpu": {"batch_size": 16, "warmup": 2, "steps_per_round": 1},
}


# ---------------------------------------------------------------------------- focalexp bench
@dataclass
class BenchReport:
    """Every model x mode of one :func:`run_bench`, in model order then mode order, and the environment."""

    results: list[BenchResult]
    env: dict[str, Any]

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.name for r in self.results))

    def get(self, name: str, mode: str) -> BenchResult:
        return next(r for r in self.results if r.name == name and r.mode == mode)

    def to_dict(self) -> dict[str, Any]:
        return {"env": dict(self.env), "results": [r.to_dict() for r in self.results]}

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per model x mode (the CSV's rows): figures first, then the settings."""
        out = []
        for r in self.results:
            out.append({
                "model": r.name, "mode": r.mode, "batch_size": r.batch_size, "img_size": r.img_size,
                "images_per_s": r.median, "images_per_s_min": min(r.images_per_s),
                "images_per_s_max": max(r.images_per_s), "step_ms": r.step_ms,
                "peak_delta_mb": r.peak_delta_mb, "mem_kind": r.mem_kind, "weights_mb": r.weights_mb,
                "params": r.params, "gmacs": r.gmacs,
                "ratio": r.ratio, "ratio_q1": r.ratio_q1, "ratio_q3": r.ratio_q3, "rounds": len(r.seconds),
                **{k: self.env.get(k) for k in ("device", "device_name", "threads", "precision", "channels_last",
                                                 "compile", "steps_per_round", "warmup", "torch", "timm")},
            })
        return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: expected cpu or cuda[:N], got '{device}'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected cpu or cuda[:N], got '{device}'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise ConfigError(f"--device {device}: CUDA is not available (torch {torch.__version__}, {build}, "
                              "no GPU visible); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"--{name}: expected a positive integer, got {value!r}")
    return value


def _resolve_specs(models: Sequence[Any], overrides: Mapping[str, Any] | None) -> list[Any]:
    """ModelSpecs with unique labels; ``overrides`` apply to every focalexp preset (not to timm models)."""
    from ..models.resolve import ModelSpec, resolve_model_spec

    if isinstance(models, (str, ModelSpec)):
        models = [models]
    if not models:
        raise ConfigError("--model: name at least one model")
    specs = []
    for m in models:
        spec = m if isinstance(m, ModelSpec) else resolve_model_spec(str(m))
        if overrides and spec.config is not None and not isinstance(m, ModelSpec):
            spec = resolve_model_spec(str(m), overrides)
        specs.append(spec)
    if overrides and all(s.config is None for s in specs):
        raise ConfigError("--set: overrides apply to focalexp presets, and none of the models is one")
    seen: dict[str, int] = {}
    out = []
    for s in specs:  # the same model twice is an A/A check: keep both, with distinct labels
        seen[s.label] = seen.get(s.label, 0) + 1
        out.append(s if seen[s.label] == 1 else dataclasses.replace(s, label=f"{s.label} #{seen[s.label]}"))
    return out


def _build(spec: Any, img_size: int, explicit_size: bool) -> nn.Module:
    """The model on CPU; a timm model asked for another resolution is built for it where it takes one."""
    if spec.config is None and explicit_size and "img_size" not in (spec.timm_kwargs or {}):
        import timm

        try:
            return timm.create_model(spec.timm_name, pretrained=False, img_size=img_size, **(spec.timm_kwargs or {}))
        except TypeError as err:  # CNNs take any size and no img_size argument
            if "img_size" not in str(err):
                raise
    return spec.build()


def _in_chans(spec: Any) -> int:
    return spec.in_chans


def _check_fits(specs: Sequence[Any], sizes: Sequence[int], batch_size: int, modes: Sequence[str]) -> None:
    """On CPU: refuse a batch whose input (every model), plus for a FocalNet its activations (a training
    step's, else an evaluation's: :mod:`focalexp.models.footprint`, lower bounds), cannot fit this
    machine's memory; one line naming --batch-size (or --img-size) with how many images fit."""
    from ..fileio import machine_memory_gb
    from ..models.footprint import BYTES_PER_PARAM, activation_bytes, approx_params, inference_bytes

    gb = machine_memory_gb()
    if gb is None:
        return
    for spec, size in zip(specs, sizes):
        per_image = _in_chans(spec) * size * size * 4
        fixed = 0
        if spec.config is not None:
            train = "train" in modes
            per_image += activation_bytes(spec.config, size) if train else inference_bytes(spec.config, size)
            fixed = approx_params(spec.config) * (BYTES_PER_PARAM if train else 4)
        fits = int((gb * 2 ** 30 - fixed) // per_image)
        if batch_size > fits:
            key = "--batch-size" if fits >= 1 else "--img-size"
            raise ConfigError(f"{key}: {batch_size:,} images of {size} px: {spec.label} needs at least "
                              f"{(fixed + batch_size * per_image) / 2 ** 30:,.1f} GiB; this machine has {gb:.1f} GiB"
                              + (f": about {fits:,} images fit" if fits >= 1 else ""))


def run_bench(
    models: Sequence[Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    img_size: int | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    mode: str = "infer",
    device: str | torch.device | None = None,
    rounds: int = 5,
    warmup: int | None = None,
    steps_per_round: int | None = None,
    threads: int | None = None,
    flops: bool = True,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Throughput, step time, peak memory, params, GMACs of ``models`` side by side, and ratios to the first.

    ``models``: focalexp preset names/aliases, timm model names or :class:`~focalexp.models.resolve.ModelSpec` s;
    ``overrides`` (FocalNetConfig fields) apply to every preset. ``img_size`` None: each model's native
    resolution. ``device`` None: CUDA when available. ``batch_size``, ``warmup``, ``steps_per_round`` None:
    :data:`DEFAULTS` for the device (batch 128 on CUDA, the papers'; 16 on CPU). ``precision`` bf16/fp16
    run under autocast (weights stay fp32, timm's ``--amp``). ``mode``: infer, train or both. ``threads``
    sets torch's intra-op threads for the run. Everything is validated before any model is built; bad
    input raises :class:`~focalexp.errors.ConfigError` / ``UnknownNameError``.
    """
    from .flops import PAPER_CONVENTION, config_flops, count_params, measure_flops
    from ..models.resolve import img_size_override

    # ---- validate everything before building anything
    if mode not in (*MODES, "both"):
        raise ConfigError(f"--mode: expected infer, train or both, got '{mode}'")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: expected one of {', '.join(PRECISIONS)}, got '{precision}'")
    dev = _resolve_device(device)
    defaults = DEFAULTS[dev.type]
    batch_size = _positive("batch-size", defaults["batch_size"] if batch_size is None else batch_size)
    rounds = _positive("rounds", rounds)
    warmup = _positive("warmup", defaults["warmup"] if warmup is None else warmup)
    steps_per_round = _positive("steps", defaults["steps_per_round"] if steps_per_round is None else steps_per_round)
    if threads is not None:
        _positive("threads", threads)
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {_device_name(dev)} does not support bfloat16; use fp16 or fp32")
    specs = _resolve_specs(models, overrides)
    sizes = [img_size_override(s, img_size) for s in specs]
    modes = list(MODES) if mode == "both" else [mode]
    if dev.type == "cpu":
        _check_fits(specs, sizes, batch_size, modes)

    def say(msg: str) -> None:
        if progress:
            progress(msg)

    old_threads = torch.get_num_threads()
    old_cudnn = torch.backends.cudnn.benchmark
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # timm and the official repos; shapes stay fixed

        # ---- build, check, count (CPU, fp32, batch 1), then move to the device
        built: list[tuple[Any, nn.Module, int]] = []
        info: dict[str, dict[str, Any]] = {}
        flops_errors: dict[str, str] = {}
        for spec, size in zip(specs, sizes):
            say(f"building {spec.label}")
            torch.manual_seed(seed)
            model = _build(spec, size, img_size is not None).eval()
            probe = torch.zeros(1, _in_chans(spec), size, size)
            try:
                with torch.inference_mode():
                    num_classes = model(probe).shape[-1]
            except (RuntimeError, AssertionError, ValueError) as err:
                msg = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise ConfigError(f"{spec.label} does not run at {size}x{size}: {msg}") from None
            gmacs = None
            if flops:
                try:
                    if spec.config is not None:  # counted once per config (the count cache)
                        gmacs = config_flops(spec.config, size, name=spec.label, cross_check=False).gmacs
                    else:
                        gmacs = measure_flops(model, size, name=spec.label, cross_check=False,
                                              in_chans=_in_chans(spec)).gmacs
                except Exception as err:  # noqa: BLE001 - a tracer failure costs the GMACs column, not the run
                    flops_errors[spec.label] = f"{type(err).__name__}: {str(err).strip()[:200]}"
            info[spec.label] = {
                "params": count_params(model), "gmacs": gmacs, "num_classes": num_classes,
                "weights_mb": sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
                / 2**20,
            }
            model = model.to(dev)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            if compile:
                model = torch.compile(model)
            built.append((spec, model, size))

        # ---- one fixed input per resolution, on the device
        gen = torch.Generator().manual_seed(seed)
        inputs: dict[tuple[int, int], torch.Tensor] = {}
        for spec, _, size in built:
            key = (_in_chans(spec), size)
            if key not in inputs:
                x = torch.randn(batch_size, key[0], size, size, generator=gen).to(dev)
                inputs[key] = x.contiguous(memory_format=torch.channels_last) if channels_last else x

        # ---- time every mode, all models interleaved
        results: list[BenchResult] = []
        by_mode: dict[str, dict[str, BenchResult]] = {}
        for m in modes:
            steps = {}
            for spec, model, size in built:
                steps[spec.label] = make_step(model, inputs[(_in_chans(spec), size)], m, precision=precision,
                                              num_classes=info[spec.label]["num_classes"])
            if compile:  # compilation happens here, before the warm-up that measures memory
                for name, fn in steps.items():
                    say(f"{m}: compiling {name}")
                    fn()
                sync(dev)
            res = interleaved(steps, batch_size=batch_size, img_size=sizes[0], mode=m, device=dev, warmup=warmup,
                              rounds=rounds, steps_per_round=steps_per_round, progress=lambda s, m=m: say(f"{m}: {s}"))
            for spec, _, size in built:
                res[spec.label].img_size = size
            by_mode[m] = res
        first = specs[0].label
        for spec in specs:  # model order, then mode order
            for m in modes:
                r = by_mode[m][spec.label]
                r.params, r.gmacs, r.weights_mb = (info[spec.label][k] for k in ("params", "gmacs", "weights_mb"))
                r.ratio, r.ratio_q1, r.ratio_q3 = paired_ratio(r, by_mode[m][first])
                results.append(r)

        import timm

        env = {
            "device": str(dev), "device_name": _device_name(dev), "threads": torch.get_num_threads(),
            "precision": precision, "autocast": precision != "fp32", "channels_last": channels_last,
            "compile": compile, "mode": mode, "batch_size": batch_size, "img_size": img_size,
            "rounds": rounds, "warmup": warmup, "steps_per_round": steps_per_round, "seed": seed,
            "torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda if dev.type == "cuda" else None,
            "cudnn_benchmark": torch.backends.cudnn.benchmark if dev.type == "cuda" else None,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "memory_kind": results[0].mem_kind, "memory_meaning": MEM_MEANING[results[0].mem_kind or MEM_NONE],
            "gmacs_convention": PAPER_CONVENTION + "; per image at the benchmark resolution",
            "ratio_meaning": f"speed relative to {first}: median (quartiles) of round-by-round ratios",
            "baseline": first,
            "flops_errors": flops_errors,
        }
        return BenchReport(results=results, env=env)
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_cudnn

