"""Checkpoints: read any layout (official, timm, Hugging Face, focalexp), convert, load, save atomically.

Layouts, detected from the keys (their renames, both ways, in :mod:`focalexp.models.weight_layouts`):

``official`` (microsoft/FocalNet ``*.pth``)
    ``{'model': state_dict, ...}``; ``patch_embed.*``, ``layers.{i}.blocks.{j}.*`` with ``nn.Linear``
    weights, ``modulation.h`` a 1x1 ``Conv2d``, the downsample at the *end* of stage ``i``
    (``layers.{i}.downsample``), ``gamma_1/2`` for LayerScale, ``modulation.ln`` (LN inside the
    modulation; the released ``focalnet_base_iso_16.pth`` has it), ``head``.
``timm`` (``timm/focalnet_*`` on the Hugging Face hub)
    ``stem.*``, ``layers.{i}.downsample`` at the *start* of stage ``i``, 1x1 convolutions (4-D weights)
    for every projection, ``ls1/2.gamma``, ``norm{1,2}_post`` for post-norm blocks, ``head.fc``.
``hf`` (transformers' ``FocalNetForImageClassification``, ``save_pretrained`` folders)
    ``focalnet.embeddings.*``, ``focalnet.encoder.stages.{i}.layers.{j}.*`` with ``projection_in/context/out``,
    the downsample at the *end* of stage ``i``, ``gamma_1/2``, ``focalnet.layernorm``, ``classifier``; the bare
    ``FocalNetModel`` without the ``focalnet.`` prefix. A folder's ``config.json``: :mod:`focalexp.models.hf`.
``focalexp``
    ``{'format': 'focalexp', 'config': {...}, 'state_dict': ...}`` with this package's names.
"""

from __future__ import annotations

import functools
import io
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..errors import CheckpointError

FORMAT = "focalexp"


# ---------------------------------------------------------------------------- reading
# torch's legacy (pre-1.6, non-zip) files open with the pickled magic number 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_HEAD = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_MAX_NESTED = 4  # plain pickles of tensors hold torch files inside (torch.storage._load_from_bytes)


def read_state(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Read a checkpoint file without running anything from it.

    Formats: torch's zip archives (``torch.save`` since 1.6), torch's legacy pickle format, plain
    pickles (``pickle.dump`` of a state dict) and ``.safetensors``. Every pickle goes through one
    allowlist (:data:`focalexp.unpickle.TENSORS` plus numpy values and config holders): tensors,
    containers, numbers, strings and config objects load; any other global (a function to call, a
    class to build) refuses the whole file before anything of it is imported or run. TorchScript
    archives (programs, not weights) and torch's pre-2018 tar format are refused.

    Every failure is a :class:`CheckpointError` of one line that names the file and says whether it is
    missing, not a checkpoint, corrupt, or refused.
    """
    from ..fileio import input_file

    p = input_file(path, what, CheckpointError)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{what}: cannot read '{p}' ({e.strerror or e})") from None
    kind = _sniff(data, p.suffix)
    if kind == "empty":
        raise CheckpointError(f"{what}: '{p}' is empty (0 bytes): not a checkpoint")
    if kind == "safetensors":
        return _read_safetensors(p, what)
    if kind == "tar":
        raise CheckpointError(f"{what}: '{p}' is a tar archive (torch's pre-2018 format or not a checkpoint); "
                              "focalexp reads torch's zip and pickle formats and safetensors")
    if kind == "text":
        head = data[:40].decode("utf-8", "replace").strip().splitlines()[0][:30] if data.strip() else ""
        raise CheckpointError(f"{what}: '{p}' is a text file (starts '{head}'), not a checkpoint")
    return _load_pickled(data, p, what=what)


def _is_zip(data: bytes) -> bool:
    return data[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _sniff(data: bytes, suffix: str) -> str:
    if not data:
        return "empty"
    if _is_zip(data):
        return "zip"
    if suffix == ".safetensors" or (len(data) > 9 and data[8:9] == b"{" and
                                    int.from_bytes(data[:8], "little") < len(data)):
        return "safetensors"
    if len(data) > 262 and data[257:262] == b"ustar":
        return "tar"
    if data[:1] == b"\x80" or data[:1] in b"(}]cq":  # pickle protocol >= 2, or the usual protocol 0/1 openings
        return "pickle"
    try:
        data[:4096].decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "pickle" if data[:1] < b"\x80" else "binary"


def _read_safetensors(p: Path, what: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(p), device="cpu"))
    except Exception as e:  # noqa: BLE001 - the library reports damage in many ways
        raise CheckpointError(f"{what}: '{p}' is a corrupt safetensors file ({_first_line(e)})") from None


def _load_pickled(data: bytes, p: Path, depth: int = 0, what: str = "checkpoint") -> Any:
    import pickle

    from .. import unpickle

    table = _checkpoint_table()
    try:
        if _is_zip(data):
            _refuse_torchscript(data, p, what)
            return _torch_load(data, table)
        if data.startswith(_TORCH_LEGACY_HEAD):
            return _torch_load(data, table)
        if depth >= _MAX_NESTED:
            raise CheckpointError(f"{what}: '{p}' nests torch files more than {_MAX_NESTED} deep; refused")
        nested = {("torch.storage", "_load_from_bytes"): lambda b: _load_pickled(bytes(b), p, depth + 1, what)}
        return unpickle.loads(data, {**table, **nested})
    except CheckpointError:
        raise
    except unpickle.RefusedGlobal as e:
        raise CheckpointError(
            f"{what}: refused '{p}': it asks to call or build '{e.qualname}', which is not a tensor, a "
            "container or a known config type; nothing from the file was run (only weights are loaded: "
            "re-save its state dict with torch.save if you trust where it came from)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            RuntimeError, OverflowError, MemoryError, RecursionError, UnicodeDecodeError, OSError,
            ImportError, AssertionError, SystemError) as e:
        raise CheckpointError(f"{what}: '{p}' is corrupt or not a checkpoint ({_first_line(e)})") from None


def _refuse_torchscript(data: bytes, p: Path, what: str) -> None:
    """Refuse a zip that is not a torch checkpoint (no data.pkl), and TorchScript archives, which torch.load
    runs as programs (torch.jit.load); the latter are found with torch's own reader, as torch.load sees them."""
    import zipfile

    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CheckpointError(f"{what}: '{p}' is a corrupt zip archive ({_first_line(e)})") from None
    if not any(n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{what}: '{p}' is a zip archive but not a torch checkpoint (no data.pkl; it holds "
                              f"{', '.join(names[:3]) or 'nothing'})")
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    records = reader.get_all_records()
    if "constants.pkl" in records or any(r.startswith("code/") for r in records):
        raise CheckpointError(f"{what}: '{p}' is a TorchScript program (torch.jit.save), not a weights file; "
                              "programs are not run here: save its state_dict() with torch.save instead")


def _torch_load(data: bytes, table) -> Any:
    from .. import unpickle

    if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        # torch then refuses any pickle_module; its own weights-only unpickler is an allowlist too
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                      pickle_module=unpickle.torch_pickle_module(table))


@functools.lru_cache(maxsize=1)
def _checkpoint_table() -> dict:
    from .. import unpickle

    return dict(unpickle.TENSORS | unpickle.NUMPY | unpickle.CONFIGS)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def unwrap(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensor dict inside a checkpoint object, and the focalexp config if it carries one."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint: expected a dict of tensors, got {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        sd, cfg = obj.get("state_dict"), obj.get("config")
        if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in sd.items()):
            raise CheckpointError("checkpoint: a focalexp checkpoint whose 'state_dict' is not a dict of tensors "
                                  "(corrupt)")
        if cfg is not None and not isinstance(cfg, Mapping):
            raise CheckpointError(f"checkpoint: a focalexp checkpoint whose 'config' is a {type(cfg).__name__}, "
                                  "not a mapping (corrupt)")
        return dict(sd), (dict(cfg) if cfg is not None else None)
    for key in ("model", "state_dict", "model_state", "model_ema"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("checkpoint: found no tensors (expected a state dict, or one under 'model')")
    if all(k.startswith("module.") for k in sd):  # saved from DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, None


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """The name of the layout of ``sd``'s keys (:mod:`focalexp.models.weight_layouts`)."""
    from .weight_layouts import find_layout

    keys = list(sd)
    layout = find_layout(keys)
    if layout is not None:
        return layout.name
    sample = ", ".join(keys[:3])
    raise CheckpointError(
        f"checkpoint: unknown layout (keys start {sample}); expected official (patch_embed.*), "
        "timm (stem.*), Hugging Face (focalnet.embeddings.*, focalnet.encoder.*) or focalexp (stages.*)"
    )


# ---------------------------------------------------------------------------- conversion
def convert_state_dict(sd: Mapping[str, torch.Tensor], model: nn.Module, layout: str | None = None) -> dict:
    """Rename the keys of a state dict in any known layout to ``model``'s and fit 1x1 conv shapes."""
    from .weight_layouts import get_layout

    rename = get_layout(layout or detect_layout(sd)).to_ours
    target = model.state_dict()
    out = {}
    for k, v in sd.items():
        nk = rename(k)
        if nk is None:  # a tensor the layout carries that focalexp has no use for (HF's mask token)
            continue
        t = target.get(nk)
        if t is not None and t.shape != v.shape and t.numel() == v.numel():
            v = v.reshape(t.shape)  # (out, in, 1, 1) conv <-> (out, in) linear
        out[nk] = v
    return out


def state_dict_in_layout(model: nn.Module, layout: str) -> dict[str, torch.Tensor]:
    """``model``'s weights named and shaped as ``layout`` stores them (the inverse of :func:`convert_state_dict`).

    Raises a :class:`CheckpointError` naming what of the model's config the layout cannot express.
    """
    from .weight_layouts import get_layout

    lay = get_layout(layout)
    cfg = model.config
    bad = lay.unsupported(cfg)
    if bad:
        raise CheckpointError(f"the {layout} layout cannot hold this model: {'; '.join(bad)}")
    out = {}
    for k, v in model.state_dict().items():
        nk = lay.from_ours(k, cfg)
        v = v.detach()
        if lay.conv_1x1.search(nk) and v.dim() == 2:
            v = v[:, :, None, None]
        out[nk] = v.contiguous().clone()
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
def atomic_save(obj: Any, path: str | os.PathLike, previous: str | os.PathLike | None = None) -> None:
    """``torch.save`` through :func:`focalexp.fileio.atomic_write` (temporary file, fsync, rename; ``previous``:
    where the file ``path`` held so far is kept). A write that fails (a full disk) raises its ``OSError``,
    not the ``RuntimeError`` torch's zip writer makes of it, and leaves ``path`` as it was."""
    from ..fileio import atomic_write

    with atomic_write(path, binary=True, previous=previous) as f:
        sink = _WriteErrors(f)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            if sink.error is not None:
                raise sink.error from None
            raise


class _WriteErrors:
    """A file for ``torch.save`` that remembers the ``OSError`` of a failed write (torch reports only
    "unexpected pos")."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


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
