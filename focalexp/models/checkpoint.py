"""Checkpoints: read any of three layouts (official, timm, focalexp), convert, load, save atomically.

Layouts, detected from the keys:

``official`` (microsoft/FocalNet ``*.pth``)
    ``{'model': state_dict, ...}``; ``patch_embed.*``, ``layers.{i}.blocks.{j}.*`` with ``nn.Linear``
    weights, ``modulation.h`` a 1x1 ``Conv2d``, the downsample at the *end* of stage ``i``
    (``layers.{i}.downsample``), ``gamma_1/2`` for LayerScale, ``modulation.ln`` (LN inside the
    modulation; the released ``focalnet_base_iso_16.pth`` has it), ``head``.
``timm`` (``timm/focalnet_*`` on the Hugging Face hub)
    ``stem.*``, ``layers.{i}.downsample`` at the *start* of stage ``i``, 1x1 convolutions (4-D weights)
    for every projection, ``ls1/2.gamma``, ``norm{1,2}_post`` for post-norm blocks, ``head.fc``.
``focalexp``
    ``{'format': 'focalexp', 'config': {...}, 'state_dict': ...}`` with this package's names.
"""

from __future__ import annotations

import io
import os
import pickle
import types
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError

FORMAT = "focalexp"


# ---------------------------------------------------------------------------- reading
def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``; ``.safetensors`` supported)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint: no such file '{p}'")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as e:
            raise CheckpointError(f"checkpoint: '{p}' is not a readable safetensors file ({_first_line(e)})") from None
    data = p.read_bytes()
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        first = e
    # Official training checkpoints pickle their yacs config (a dict subclass, which the weights-only
    # unpickler cannot rebuild) next to the weights: retry with an allowlist that adds config classes
    # and nothing that can run code.
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except Exception:
        pass
    raise CheckpointError(
        f"checkpoint: cannot read '{p}' with weights_only=True ({_first_line(first)}); "
        "re-save just the state dict with torch.save(state_dict, path)"
    ) from None


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("_codecs", "encode"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("yacs.config", "CfgNode"),
    ("argparse", "Namespace"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors, containers and config objects; refuses every other global."""

    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol-2 names
        if (module, name) in _ALLOWED_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ) or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


_restricted_pickle = types.SimpleNamespace(
    __name__="focalexp_restricted_pickle", Unpickler=_RestrictedUnpickler, load=pickle.load
)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensor dict inside a checkpoint object, and the focalexp config if it carries one."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        return dict(obj["state_dict"]), obj.get("config")
    for key in ("model", "state_dict", "model_state", "model_ema"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("checkpoint: found no tensors (expected a state dict, or one under 'model')")
    if all(k.startswith("module.") for k in sd):  # saved from DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, None


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    keys = list(sd)
    if any(k.startswith("stages.") for k in keys):
        return "focalexp"
    if any(k.startswith("stem.") for k in keys):
        return "timm"
    if any(k.startswith("patch_embed.") for k in keys) or any(re.match(r"layers\.\d+\.blocks\.", k) for k in keys):
        return "official"
    sample = ", ".join(keys[:3])
    raise CheckpointError(
        f"checkpoint: unknown layout (keys start {sample}); expected official (patch_embed.*), "
        "timm (stem.*) or focalexp (stages.*)"
    )


# ---------------------------------------------------------------------------- conversion
def _rename_official(k: str) -> str:
    k = re.sub(r"^patch_embed\.", "stem.", k)
    k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample.", k)
    k = re.sub(r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks.", k)
    k = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", k)
    k = k.replace(".modulation.ln.", ".modulation.norm.")
    return k


def _rename_timm(k: str) -> str:
    k = re.sub(r"^layers\.(\d+)\.", r"stages.\1.", k)
    k = re.sub(r"\.norm([12])_post\.", r".norm\1.", k)
    k = re.sub(r"^head\.fc\.", "head.", k)
    return k


def convert_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, layout: str | None = None) -> dict:
    """Rename the keys of an official/timm/focalexp state dict to ``model``'s and fit 1x1 conv shapes."""
    layout = layout or detect_layout(sd)
    rename = {"official": _rename_official, "timm": _rename_timm, "focalexp": lambda k: k}[layout]
    target = model.state_dict()
    out = {}
    for k, v in sd.items():
        nk = rename(k)
        t = target.get(nk)
        if t is not None and t.shape != v.shape and t.numel() == v.numel():
            v = v.reshape(t.shape)  # (out, in, 1, 1) conv <-> (out, in) linear
        out[nk] = v
    return out


def fit_report(sd: Mapping[str, torch.Tensor], model: nn.Module) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape mismatches) of ``sd`` against ``model``."""
    target = model.state_dict()
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in sd
        if k in target and sd[k].shape != target[k].shape
    ]
    return missing, unexpected, shapes


def _summary(label: str, items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return f"{label} {', '.join(items[:n])}{more}"


def load_state_into(model: nn.Module, obj: Any, *, strict: bool = True, source: str = "checkpoint") -> dict:
    """Load a checkpoint object (any layout) into ``model``.

    With ``strict`` (default) any missing/unexpected key or shape mismatch raises one line naming the
    keys; otherwise mismatching tensors are skipped and listed in the returned report.
    """
    sd, _ = unwrap(obj)
    layout = detect_layout(sd)
    sd = convert_state_dict(sd, model, layout)
    if not hasattr(model, "head"):  # backbone mode: the classifier's final norm and head are not built
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "norm."))}
    missing, unexpected, shapes = fit_report(sd, model)
    if strict and (missing or unexpected or shapes):
        parts = [p for p in (
            _summary("missing", missing) if missing else "",
            _summary("unexpected", unexpected) if unexpected else "",
            _summary("shape", shapes) if shapes else "",
        ) if p]
        raise CheckpointError(f"{source} ({layout} layout) does not fit the model: " + "; ".join(parts))
    target = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in target and v.shape == target[k].shape}
    model.load_state_dict(usable, strict=False)
    return {"layout": layout, "missing": missing, "unexpected": unexpected, "shape_mismatch": shapes}


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> dict:
    """Load a checkpoint file of any layout into ``model`` (see :func:`load_state_into`)."""
    return load_state_into(model, read_state(path), strict=strict, source=f"checkpoint '{path}'")


# ---------------------------------------------------------------------------- writing
def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model: nn.Module, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
    """Save ``model`` in focalexp's layout: its config (as a plain dict) next to the weights."""
    cfg = getattr(model, "config", None)
    obj = {
        "format": FORMAT,
        "version": 1,
        "config": cfg.to_dict() if cfg is not None else None,
        "state_dict": model.state_dict(),
        **(dict(extra) if extra else {}),
    }
    atomic_save(obj, path)
