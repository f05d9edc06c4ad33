"""Whether a model is being captured into a graph rather than run: scripted, traced, compiled or exported.

The model's eager-only code (the CPU fast path's dispatch on shapes and dtypes, the input-size checks,
the window-attention caches) steps aside while :func:`is_capturing` is true, so ``torch.jit.script``,
``torch.jit.trace``, ``torch.fx`` (``symbolic_trace``, timm's ``FeatureGraphNet``, torchvision's
``create_feature_extractor``), ``torch.compile`` and ``torch.export`` see plain tensor code. Eager runs
are unchanged.

Inside TorchScript the function compiles to ``True`` (``torch.jit.is_scripting()``); the eager checks
are never compiled.
"""

import torch

try:  # torch.fx's own flag (private); newer torch names the symbolic-tracing-only test, older ones is_fx_tracing
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing as _is_fx_tracing
except ImportError:  # pragma: no cover
    try:
        from torch.fx._symbolic_trace import is_fx_tracing as _is_fx_tracing
    except ImportError:
        def _is_fx_tracing() -> bool:
            return False

__all__ = ["is_capturing", "is_fx_tracing"]


def is_fx_tracing() -> bool:
    """True inside ``torch.fx`` symbolic tracing (values are Proxies: no Python control flow on them)."""
    if torch.jit.is_scripting():
        return False
    return _eager_fx_tracing()


def is_capturing() -> bool:
    """True while the caller runs under torch.jit.script/trace, torch.fx tracing, torch.compile or export."""
    if torch.jit.is_scripting():
        return True
    return _eager_capturing()


@torch.jit.unused
def _eager_fx_tracing() -> bool:
    return _is_fx_tracing()


@torch.jit.unused
def _eager_capturing() -> bool:
    if torch.jit.is_tracing() or _is_fx_tracing():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None:
        if compiler.is_compiling():
            return True
        is_exporting = getattr(compiler, "is_exporting", None)
        if is_exporting is not None and is_exporting():
            return True
    return False
