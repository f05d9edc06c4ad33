"""Timing models side by side: interleaved rounds in one process, and speed ratios round by round.

Conventions (timm's ``benchmark.py`` and the papers'): warm-up before timing, ``inference_mode`` for
inference, CUDA synchronisation around every timed step on GPU, one fixed input tensor already on the
device (no data loading), images/s = batch x steps / wall time of the round. Models are timed in
alternating rounds (the order flips every round) so that drifts of the machine (thermal, other tenants)
hit all of them alike; each result reports the median, min and max over rounds, and
:func:`paired_ratio` compares two models round by round. The warm-up also measures each model's peak
memory (:mod:`.memory`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .memory import PeakMemory, sync

MODES = ("infer", "train")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class BenchResult:
    name: str
    mode: str  # "infer" or "train"
    batch_size: int
    img_size: int
    images_per_s: list[float] = field(default_factory=list)  # one value per round
    seconds: list[float] = field(default_factory=list)  # wall time of each round
    peak_delta_mb: float | None = None  # warm-up peak above the start, MiB, of the kind mem_kind says (.memory)
    mem_kind: str | None = None  # MEM_CUDA, MEM_RSS or MEM_NONE
    params: int | None = None  # trainable parameters
    gmacs: float | None = None  # per image, fvcore (the papers' "FLOPs")
    weights_mb: float | None = None  # parameters + buffers
    ratio: float | None = None  # speed relative to the first model: median of round-by-round ratios
    ratio_q1: float | None = None
    ratio_q3: float | None = None

    @property
    def peak_mem_mb(self) -> float | None:
        """The old name of :attr:`peak_delta_mb` (not a process peak: see :mod:`focalexp.analysis.memory`)."""
        return self.peak_delta_mb

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

    Peak memory (:class:`~.memory.PeakMemory`, ``peak_delta_mb``) is measured over each model's warm-up
    steps, one model at a time: the CUDA allocator peak on GPU, the RSS delta on CPU (None without warm-up
    steps).
    """
    results = {n: BenchResult(n, mode, batch_size, img_size) for n in steps}
    for name, fn in steps.items():  # warm-up (and peak memory) one model at a time
        mem = PeakMemory(device)
        mem.start()
        for _ in range(warmup):
            fn()
        peak = mem.stop()
        results[name].peak_delta_mb = peak if warmup > 0 else None
        results[name].mem_kind = mem.kind
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(list(steps)))
        for name in order:
            fn = steps[name]
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            sync(device)
            dt = time.perf_counter() - t0
            results[name].seconds.append(dt)
            results[name].images_per_s.append(batch_size * steps_per_round / dt)
        if progress:
            progress(f"round {r + 1}/{rounds}")
    return results
