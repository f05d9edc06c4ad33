"""The CPU-inference fast path of the token-wise projections: :func:`linear`, :class:`Linear`, :class:`ChannelLinear`.

CPU inference in fp32: token-wise projections go through oneDNN's inner product (the primitive PyTorch's
own compiler emits for CPU linears), which adds the bias inside the GEMM instead of first copying it into
the output, and applies the MLP's GELU in the same pass. Everything else (training, autocast, other dtypes
and devices, tracing, FLOP counting, torch.compile) takes the reference path ``F.linear``. Both give the
same numbers (``tests/test_fastpath.py`` compares them). Under capture (TorchScript, ``torch.jit.trace``,
``torch.fx``, ``torch.compile``, export: :func:`focalexp.models.capture.is_capturing`) the dispatch itself,
which reads shapes and dtypes in Python, is skipped before it looks at the tensor; the fast path is measured against timm by
``analysis/speed_vs_timm.py``.

Switches: the environment variable ``FOCALEXP_FAST_PATH=0`` (read at import), :func:`set_fast_path` for
the whole process, :func:`reference_path` for a block of code.
"""

import contextlib
import os
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .capture import is_capturing
from .layout import to_nchw, to_nhwc

_FAST = os.environ.get("FOCALEXP_FAST_PATH", "1") != "0"
_MKLDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
)

# oneDNN reorders the weight on every call; below this many rows that costs more than the bias copy
# and separate GELU it saves, and MKL's GEMM behind F.linear is faster (measured on FocalNet-T's shapes)
FAST_MIN_ROWS = 8192


def fast_path_enabled() -> bool:
    """Whether the fast path is on and this torch build has oneDNN's fused linear."""
    return _FAST and _MKLDNN_LINEAR is not None


def set_fast_path(enabled: bool) -> None:
    """Turn the CPU-inference fast path on or off for the whole process."""
    global _FAST
    _FAST = bool(enabled)


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Run the reference path (``F.linear`` everywhere) inside the block."""
    global _FAST
    before, _FAST = _FAST, False
    try:
        yield
    finally:
        _FAST = before


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 spelled it differently
        return torch.is_autocast_cpu_enabled()


def _dispatch_mode_active() -> bool:
    # FlopCounterMode, FakeTensorMode and friends: they must see the reference ops
    return _get_current_dispatch_mode() is not None


@torch.jit.unused
def _use_fast(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _FAST
        and not is_capturing()  # first: under torch.fx the shape checks below would see Proxies
        and x.numel() >= FAST_MIN_ROWS * x.shape[-1]
        and _MKLDNN_LINEAR is not None
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not _autocast_on()
        and not _dispatch_mode_active()
    )


@torch.jit.unused
def _fast_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], act: str) -> torch.Tensor:
    return _MKLDNN_LINEAR(x, weight, bias, act or "none", [], "none" if act else "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], act: str = "") -> torch.Tensor:
    """``F.linear`` (then GELU when ``act="gelu"``), on the fast path where it applies (TorchScript-able)."""
    if not torch.jit.is_scripting() and _use_fast(x, weight):
        return _fast_linear(x, weight, bias, act)
    y = F.linear(x, weight, bias)
    if act == "gelu":
        y = F.gelu(y)
    return y


class Linear(nn.Linear):
    """``nn.Linear`` on the fast path where it applies (same parameters, same hooks, same numbers)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class ChannelLinear(Linear):
    """A Linear over the channels of an NCHW-shaped tensor (a 1x1 convolution stored as a Linear).

    On a channels-last tensor both permutes are views, so this is one GEMM with no copies. Its weight
    has the Linear shape ``(out, in)``; the official code's ``h`` is a ``Conv2d(k=1)`` with the same
    default initialisation, so the official init leaves it as is.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_nchw(linear(to_nhwc(x), self.weight, self.bias))
