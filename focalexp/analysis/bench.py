"""Throughput and memory, measured side by side: interleaved rounds, one process, same input.

Conventions (timm's ``benchmark.py`` and the papers'): warm-up before timing, ``inference_mode`` for
inference, CUDA synchronisation around every timed step on GPU, one fixed input tensor already on the
device (no data loading), images/s = batch x steps / wall time of the round. Models are timed in
alternating rounds (the order flips every round) so that drifts of the machine (thermal, other tenants)
hit all of them alike; each result reports the median, min and max over rounds, and
:func:`paired_ratio` compares two models round by round.

:func:`run_bench` (``focalexp bench``) puts it together for any focalexp presets and timm models: build,
validate, count params and GMACs, time them interleaved per mode, and return a :class:`BenchReport`.

Peak memory is measured during each model's warm-up, above what the process held just before it (so the
weights are not in it; ``weights_mb`` has them): on CUDA the caching allocator's peak, on CPU the peak
resident set size less file-backed pages (Linux: ``/proc/self/clear_refs`` resets the peak, ``VmHWM`` reads
it, after ``gc.collect()`` and ``malloc_trim`` so that memory freed by the previous model is not reused unseen).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

MODES = ("infer", "train")
PRECISIONS = ("fp32", "bf16", "fp16")

MEM_CUDA = "cuda_allocator_peak"
MEM_RSS = "cpu_rss_delta"
MEM_NONE = "unavailable"
MEM_MEANING = {
    MEM_CUDA: "CUDA allocator peak during warm-up, above the memory allocated before it (weights excluded)",
    MEM_RSS: "process peak RSS during warm-up minus RSS just before it, anonymous memory (library code paged in "
             "is left out; Linux /proc; weights excluded; allocator reuse makes it approximate, +-20% run to run)",
    MEM_NONE: "not measured (CPU without a writable /proc/self/clear_refs)",
}
MEM_SHORT = {MEM_CUDA: "CUDA alloc", MEM_RSS: "RSS delta", MEM_NONE: "n/a"}

# defaults per device type: CUDA follows the papers (batch 128) and timm (10 warm-up steps); a CPU step at
# batch 128 and 224 px takes tens of seconds, so CPU defaults are small
DEFAULTS = {
    "cuda": {"batch_size": 128, "warmup": 10, "steps_per_round": 10},
    "cpu": {"batch_size": 16, "warmup": 2, "steps_per_round": 1},
}


@dataclass
class BenchResult:
    name: str
    mode: str  # "infer" or "train"
    batch_size: int
    img_size: int
    images_per_s: list[float] = field(default_factory=list)  # one value per round
    seconds: list[float] = field(default_factory=list)  # wall time of each round
    peak_mem_mb: float | None = None  # MB = 2**20 bytes, of the kind mem_kind says (see PeakMemory)
    mem_kind: str | None = None  # MEM_CUDA, MEM_RSS or MEM_NONE
    params: int | None = None  # trainable parameters
    gmacs: float | None = None  # per image, fvcore (the papers' "FLOPs")
    weights_mb: float | None = None  # parameters + buffers
    ratio: float | None = None  # speed relative to the first model: median of round-by-round ratios
    ratio_q1: float | None = None
    ratio_q3: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)

    @property
    def step_ms(self) -> float:
        return 1000.0 * self.batch_size / self.median

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(median=self.median, min=min(self.images_per_s), max=max(self.images_per_s), step_ms=self.step_ms)
        return d


def paired_ratio(a: BenchResult, b: BenchResult) -> tuple[float, float, float]:
    """Speed of ``a`` relative to ``b`` from rounds timed back to back: (median, lower, upper quartile).

    Each round's ratio compares two measurements taken seconds apart, so slow drifts of the machine
    cancel; the median over rounds is robust to the odd disturbed round.
    """
    r = sorted(tb / ta for ta, tb in zip(a.seconds, b.seconds))
    q = lambda f: r[min(len(r) - 1, int(f * len(r)))]  # noqa: E731
    return statistics.median(r), q(0.25), q(0.75)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- peak memory
def _status_kb(key: str) -> int | None:
    return _status(key).get(key)


def _status(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in kB (those present)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _anon_kb(s: dict[str, int], rss_key: str) -> int | None:
    """Anonymous memory: ``rss_key`` (VmRSS or VmHWM) less file-backed and shared pages (the libraries'
    code that a first call pages in); the whole of it on kernels without the split (< 4.5)."""
    if rss_key not in s:
        return None
    return s[rss_key] - s.get("RssFile", 0) - s.get("RssShmem", 0)


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give memory freed to glibc back to the OS, so that the next RSS delta sees every page it touches."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


_RSS_OK: bool | None = None


def rss_peak_available() -> bool:
    global _RSS_OK
    if _RSS_OK is None:
        _RSS_OK = _status_kb("VmHWM") is not None and _reset_peak_rss()
    return _RSS_OK


class PeakMemory:
    """Peak memory of what runs between :meth:`start` and :meth:`stop`, above what was held at start (MB).

    CUDA: the caching allocator's peak (``max_memory_allocated``). CPU: the process's peak RSS minus its
    RSS at start, anonymous pages only (library code paged in by a first call is not the model's), or None
    where ``/proc`` cannot do it (``kind`` says which).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = MEM_CUDA if device.type == "cuda" else (MEM_RSS if rss_peak_available() else MEM_NONE)
        self._base = 0

    def start(self) -> None:
        gc.collect()
        if self.kind == MEM_CUDA:
            _sync(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.kind == MEM_RSS:
            _malloc_trim()
            _reset_peak_rss()
            self._base = _anon_kb(_status("VmRSS", "RssFile", "RssShmem"), "VmRSS") or 0

    def stop(self) -> float | None:
        _sync(self.device)
        if self.kind == MEM_CUDA:
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        if self.kind == MEM_RSS:
            # file-backed pages only grow during the warm-up: subtracting the final count leaves the anonymous peak
            peak = _anon_kb(_status("VmHWM", "RssFile", "RssShmem"), "VmHWM")
            return None if peak is None else max(0, peak - self._base) / 1024
        return None


# ---------------------------------------------------------------------------- timing
def make_step(model: nn.Module, x: torch.Tensor, mode: str, *, precision: str = "fp32",
              lr: float = 1e-4, num_classes: int | None = None) -> Callable[[], None]:
    """A zero-argument function running one inference or one training step (fwd + bwd + AdamW).

    ``num_classes`` (the width of the logits; found by a forward pass when not given) sets the targets.
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(x.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast():
                model(x)

        return step
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    if num_classes is None:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[-1]
    target = torch.arange(x.shape[0], device=x.device) % num_classes

    def step() -> None:
        with autocast():
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def interleaved(
    steps: dict[str, Callable[[], None]],
    *,
    batch_size: int,
    img_size: int,
    mode: str,
    device: torch.device,
    warmup: int = 2,
    rounds: int = 5,
    steps_per_round: int = 3,
    progress: Callable[[str], None] | None = None,
) -> dict[str, BenchResult]:
    """Time every step function in alternating rounds; returns one result per name.

    Peak memory (:class:`PeakMemory`) is measured over each model's warm-up steps, one model at a time:
    the CUDA allocator peak on GPU, the RSS delta on CPU (None without warm-up steps).
    """
    results = {n: BenchResult(n, mode, batch_size, img_size) for n in steps}
    for name, fn in steps.items():  # warm-up (and peak memory) one model at a time
        mem = PeakMemory(device)
        mem.start()
        for _ in range(warmup):
            fn()
        peak = mem.stop()
        results[name].peak_mem_mb = peak if warmup > 0 else None
        results[name].mem_kind = mem.kind
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(list(steps)))
        for name in order:
            fn = steps[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            _sync(device)
            dt = time.perf_counter() - t0
            results[name].seconds.append(dt)
            results[name].images_per_s.append(batch_size * steps_per_round / dt)
        if progress:
            progress(f"round {r + 1}/{rounds}")
    return results


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
                "peak_mem_mb": r.peak_mem_mb, "mem_kind": r.mem_kind, "weights_mb": r.weights_mb,
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
    from .modelspec import ModelSpec, resolve_model_spec

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
    return spec.config.in_chans if spec.config is not None else 3


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

    ``models``: focalexp preset names/aliases, timm model names or :class:`~.modelspec.ModelSpec` s;
    ``overrides`` (FocalNetConfig fields) apply to every preset. ``img_size`` None: each model's native
    resolution. ``device`` None: CUDA when available. ``batch_size``, ``warmup``, ``steps_per_round`` None:
    :data:`DEFAULTS` for the device (batch 128 on CUDA, the papers'; 16 on CPU). ``precision`` bf16/fp16
    run under autocast (weights stay fp32, timm's ``--amp``). ``mode``: infer, train or both. ``threads``
    sets torch's intra-op threads for the run. Everything is validated before any model is built; bad
    input raises :class:`~focalexp.errors.ConfigError` / ``UnknownNameError``.
    """
    from .flops import PAPER_CONVENTION, count_params, measure_flops
    from .modelspec import img_size_override

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
                    gmacs = measure_flops(model, size, name=spec.label, cross_check=False, config=spec.config,
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
                _sync(dev)
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

