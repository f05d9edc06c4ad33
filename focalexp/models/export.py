"""Export a FocalNet: weights in focalexp's, timm's, Hugging Face's or the official layout, or a program
(ONNX, ``torch.export``), into one folder with a model card.

Every exporter is one function in a registry (:func:`register_exporter`); ``focalexp export`` parses its
flags and calls :func:`export_checkpoint`. What each writes into ``--out``:

============  ===========================================================================================
focalexp      ``model.pth`` (config + weights: ``create_model(checkpoint=...)`` rebuilds it)
timm          ``model.safetensors`` + ``config.json`` in timm's hub format (``timm.create_model("local-dir:DIR",
              pretrained=True)`` loads it)
hf            ``model.safetensors`` + ``config.json`` (``FocalNetForImageClassification.from_pretrained(DIR)``,
              or ``create_model(checkpoint=DIR)``)
official      ``model.pth``: ``{'model': state_dict}`` as microsoft/FocalNet's ``main.py`` saves it
onnx          ``model.onnx`` (input ``pixel_values`` (B, C, H, W), output ``logits``; dynamic batch)
torch-export  ``model.pt2`` (``torch.export.load(...).module()``; dynamic batch)
============  ===========================================================================================

plus ``README.md`` (a model card: the config, the run's results when the checkpoint sits in a run dir with a
``result.json``, the check) and ``export.json`` (the same, machine-readable). After writing, every export is
checked: the written files are read back (weights through layout detection, programs through their
runtime) and their logits compared with the model's on a random batch; the largest difference is recorded.

Writes are staged: everything goes to a hidden temporary folder beside ``--out``, which is renamed into
place only when complete, so a failure leaves nothing half-written. An existing non-empty ``--out`` is
refused unless ``force``, and ``force`` replaces only a folder an earlier export wrote (it holds
``export.json``), never an unrelated folder or one that holds the checkpoint itself. Programs are traced on
the reference path (:func:`focalexp.models.fastpath.reference_path`): the CPU fast path is for eager
inference and must not end up in a graph.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import ConfigError, FocalexpError, UnknownNameError
from .config import FocalNetConfig

if TYPE_CHECKING:
    import torch

class ExportCheckFailed(FocalexpError):
    """The written files do not reproduce the model's logits (a bug, not bad input: exit 1)."""

    exit_code = 1


MARKER = "export.json"
CHECK_TOLERANCE = 1e-4  # an export whose logits differ more than this from the model's fails


@dataclass
class Export:
    """What an exporter wrote: file names (relative to the folder) with a line each, how to use it, and the
    reader :func:`check_export` uses (``load(folder) -> callable(x) -> logits``)."""

    files: dict[str, str]
    usage: str
    library: str
    load: Callable[[Path], Callable[[torch.Tensor], torch.Tensor]] | None = None


@dataclass(frozen=True)
class Exporter:
    name: str
    description: str
    write: Callable[[torch.nn.Module, Path], Export]


@dataclass
class ExportResult:
    out: Path
    to: str
    files: list[str]
    config: FocalNetConfig
    max_abs_diff: float | None
    source: str | None = None
    results: dict[str, Any] | None = field(default=None)


_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str, description: str) -> Callable:
    """Decorator: ``write(model, folder) -> Export`` becomes ``--to name``."""

    def deco(fn: Callable[[torch.nn.Module, Path], Export]) -> Callable:
        _EXPORTERS[name] = Exporter(name, description, fn)
        return fn

    return deco


def exporter_names() -> list[str]:
    return list(_EXPORTERS)


# other names users reach for
ALIASES = {"huggingface": "hf", "transformers": "hf", "pt2": "torch-export", "torch_export": "torch-export",
           "export": "torch-export", "microsoft": "official", "pth": "focalexp"}


def get_exporter(name: str) -> Exporter:
    """The exporter ``name`` (or an alias); an unknown name is one line naming the closest valid choice."""
    import difflib

    name = ALIASES.get(name, name)
    if name not in _EXPORTERS:
        best = max(list(_EXPORTERS) + list(ALIASES),
                   key=lambda c: difflib.SequenceMatcher(None, str(name).lower(), c).ratio())
        raise UnknownNameError(f"unknown value '{name}' (did you mean '{ALIASES.get(best, best)}'?); "
                               f"choose from {', '.join(_EXPORTERS)}", key="--to")
    return _EXPORTERS[name]


# ---------------------------------------------------------------------------- entry points
def export_checkpoint(
    checkpoint: str | os.PathLike,
    to: str,
    out: str | os.PathLike,
    *,
    model: Any = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    check: bool = True,
) -> ExportResult:
    """Load ``checkpoint`` (any layout, a focalexp checkpoint's own config, a HF folder, or ``model`` + overrides
    for files without a config) and export it ``to`` a layout or program format into ``out``."""
    exporter = get_exporter(to)  # a typo and a bad --out are reported before torch is imported or a file read
    out = check_out(out, force=force, protect=checkpoint)
    from .factory import create_model

    net = create_model(model, checkpoint=checkpoint, **dict(overrides or {}))
    return export_model(net, exporter.name, out, force=force, source=str(checkpoint),
                        results=run_results(checkpoint), check=check)


def export_model(
    model: torch.nn.Module,
    to: str,
    out: str | os.PathLike,
    *,
    force: bool = False,
    source: str | None = None,
    results: Mapping[str, Any] | None = None,
    check: bool = True,
) -> ExportResult:
    """Export a FocalNet ``to`` a layout or program format into the folder ``out`` (staged; see the module doc)."""
    import torch

    exporter = get_exporter(to)
    to = exporter.name  # an alias ("huggingface") records the exporter's own name
    out = check_out(out, force=force, protect=source)
    cfg = model.config
    was_training = model.training
    model.eval()
    made = _make_parents(out)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        written = exporter.write(model, stage)
        diff = check_export(model, written, stage) if check and written.load is not None else None
        meta = {
            "format": "focalexp-export", "version": 1, "to": to, "source": source,
            "files": sorted(written.files), "config": cfg.to_dict(), "results": dict(results) if results else None,
            "max_abs_diff": diff, "focalexp": _version(), "torch": torch.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        (stage / "README.md").write_text(model_card(cfg, exporter, written, meta))
        (stage / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
        _move_into_place(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in made:  # the folders created for --out, innermost first
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    finally:
        model.train(was_training)
    return ExportResult(out, to, sorted(written.files) + ["README.md", MARKER], cfg, diff, source,
                        dict(results) if results else None)


def check_out(out: str | os.PathLike, *, force: bool, protect: str | os.PathLike | None = None) -> Path:
    """``out`` as a folder an export may (re)place, or one line saying why not; nothing is created."""
    from ..fileio import output_dir

    p = Path(out)
    if p.is_symlink():
        raise ConfigError(f"--out: '{p}' is a symbolic link; give the folder itself")
    output_dir(p, "--out")
    if protect is not None:
        src, dst = Path(protect).resolve(), p.resolve()
        how = ("is" if src == dst else "holds" if dst in src.parents else "is inside" if src in dst.parents else None)
        if how is not None:
            raise ConfigError(f"--out: '{p}' {how} the checkpoint being exported ('{protect}'); choose another folder")
    if p.is_dir() and any(p.iterdir()):
        if not force:
            n = sum(1 for _ in p.iterdir())
            raise ConfigError(f"--out: '{p}' exists and is not empty ({n} entr{'y' if n == 1 else 'ies'}); "
                              "choose a new folder, or --force to replace an earlier export")
        if not (p / MARKER).is_file():
            raise ConfigError(f"--out: '{p}' is not empty and is not an earlier export (no {MARKER}); --force "
                              "replaces only folders `focalexp export` wrote")
    return p


def _make_parents(out: Path) -> list[Path]:
    """Create the missing parents of ``out``; returns them innermost first (removed again on failure)."""
    missing = [d for d in out.absolute().parents if not d.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _move_into_place(stage: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, old / "x")
    try:
        os.replace(stage, out)
    except BaseException:
        if old is not None:
            os.replace(old / "x", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def run_results(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """The metrics of the run a checkpoint belongs to: ``result.json`` beside it (best.pth / last.pth in a
    run dir), numbers and short strings only; None when there is none or it is unreadable."""
    from ..fileio import read_json_object

    p = Path(checkpoint)
    f = (p if p.is_dir() else p.parent) / "result.json"
    if not f.is_file():
        return None
    try:
        raw = read_json_object(f, "result.json")
    except ConfigError:
        return None
    keep = ("status", "top1", "top5", "best_top1", "epochs_done", "params", "gmacs", "train_seconds",
            "images_per_s", "peak_memory_mb", "run_id")
    return {k: raw[k] for k in keep if isinstance(raw.get(k), (int, float, str)) and len(str(raw[k])) < 100}


def check_export(model: torch.nn.Module, written: Export, folder: Path, batch: int = 3) -> float:
    """Largest |logits difference| between ``model`` and what ``written`` reads back from ``folder``, on a
    random batch at the config's resolution (a batch other than the one programs were traced with)."""
    import torch

    cfg = model.config
    x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(0))
    run = written.load(folder)
    with torch.no_grad():
        ref, got = _tensors(model(x)), _tensors(run(x))
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
        raise ExportCheckFailed(f"export check: the exported model returns shapes {[tuple(t.shape) for t in got]}, the "
                                f"model {[tuple(t.shape) for t in ref]}; nothing was written")
    diff = max(float((b.float() - a.float()).abs().max()) for a, b in zip(ref, got))
    if not diff <= CHECK_TOLERANCE:
        raise ExportCheckFailed(f"export check: the exported model's outputs differ from the model's by {diff:.3g} "
                                f"(more than {CHECK_TOLERANCE:g}); nothing was written")
    return diff


def _tensors(out: Any) -> list:
    """Logits, or a backbone's list of feature maps, as a list of tensors."""
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:  # the installed distribution's (models never import the package above them)
        return version("focalexp")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------- weight layouts
def _weights_reader(cfg: FocalNetConfig, file: str) -> Callable[[Path], Callable]:
    def load(folder: Path) -> Callable:
        from .factory import create_model

        return create_model(cfg, checkpoint=folder / file).eval()  # through layout detection
    return load


def _save_safetensors(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(dict(sd), str(path), metadata={"format": "pt"})


@register_exporter("focalexp", "focalexp's own checkpoint: config + weights in model.pth")
def _to_focalexp(model, folder: Path) -> Export:
    from .checkpoint import save_model

    save_model(model, folder / "model.pth")
    return Export(
        {"model.pth": "config and weights (focalexp layout)"},
        "```python\nfrom focalexp import create_model\nmodel = create_model(checkpoint=\"model.pth\").eval()\n```",
        "focalexp", _own_reader)


def _own_reader(folder: Path) -> Callable:
    from .factory import create_model

    return create_model(checkpoint=folder / "model.pth").eval()  # the config comes from the file


@register_exporter("official", "microsoft/FocalNet's layout: {'model': state_dict} in model.pth")
def _to_official(model, folder: Path) -> Export:
    from .checkpoint import atomic_save, state_dict_in_layout

    atomic_save({"model": state_dict_in_layout(model, "official")}, folder / "model.pth")
    return Export(
        {"model.pth": "weights in the official layout ({'model': state_dict}, as microsoft/FocalNet saves them)"},
        "Load with microsoft/FocalNet's `classification/main.py --resume model.pth` and the matching config, or:\n\n"
        "```python\nfrom focalexp import create_model\nmodel = create_model(CONFIG, checkpoint=\"model.pth\").eval()\n```",
        "focalexp", _weights_reader(model.config, "model.pth"))


@register_exporter("timm", "timm's layout: model.safetensors (+ config.json, timm's hub format, when a timm model fits)")
def _to_timm(model, folder: Path) -> Export:
    from .checkpoint import state_dict_in_layout

    cfg = model.config
    sd = state_dict_in_layout(model, "timm")
    _save_safetensors(sd, folder / "model.safetensors")
    arch, args = timm_architecture(cfg)
    files = {"model.safetensors": "weights in timm's layout"}
    if arch is not None:
        mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if cfg.in_chans == 3 else ([0.5] * cfg.in_chans,) * 2
        hub = {
            "architecture": arch, "num_classes": cfg.num_classes, "num_features": cfg.num_features,
            "pretrained_cfg": {
                "input_size": [cfg.in_chans, cfg.img_size, cfg.img_size], "interpolation": "bicubic",
                "crop_pct": 0.875, "crop_mode": "center", "mean": mean, "std": std, "num_classes": cfg.num_classes,
                "first_conv": "stem.proj", "classifier": "head.fc",
            },
            "model_args": args,
        }
        (folder / "config.json").write_text(json.dumps(hub, indent=2) + "\n")
        files["config.json"] = f"timm hub config: architecture {arch} with model_args"
        usage = ("```python\nimport timm\nmodel = timm.create_model(\"local-dir:PATH/TO/THIS/FOLDER\", pretrained=True).eval()\n"
                 f"# or: timm.create_model(\"{arch}\", pretrained=False, **model_args) + load_state_dict\n```")
    else:
        usage = ("No registered timm model has this architecture (depths/embed_dim/levels); build timm's class "
                 "directly:\n\n```python\nfrom safetensors.torch import load_file\nfrom timm.models.focalnet import FocalNet\n"
                 f"model = FocalNet(**{args!r})\nmodel.load_state_dict(load_file(\"model.safetensors\"))\n```")
    return Export(files, usage, "timm", _weights_reader(cfg, "model.safetensors"))


# the knobs timm's registered focalnet_* functions fix (timm/models/focalnet.py); model_args may not repeat them
TIMM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "focalnet_tiny_srf": dict(depths=[2, 2, 6, 2], embed_dim=96),
    "focalnet_small_srf": dict(depths=[2, 2, 18, 2], embed_dim=96),
    "focalnet_base_srf": dict(depths=[2, 2, 18, 2], embed_dim=128),
    "focalnet_tiny_lrf": dict(depths=[2, 2, 6, 2], embed_dim=96, focal_levels=[3, 3, 3, 3]),
    "focalnet_small_lrf": dict(depths=[2, 2, 18, 2], embed_dim=96, focal_levels=[3, 3, 3, 3]),
    "focalnet_base_lrf": dict(depths=[2, 2, 18, 2], embed_dim=128, focal_levels=[3, 3, 3, 3]),
    **{f"focalnet_{size}_fl{lv}": dict(depths=[2, 2, 18, 2], embed_dim=dim, focal_levels=[lv] * 4,
                                       **({"focal_windows": [5] * 4} if lv == 3 and size != "huge" else {}),
                                       use_post_norm=True, use_overlap_down=True, layerscale_value=1e-4,
                                       **({"use_post_norm_in_modulation": True} if size == "huge" else {}))
       for size, dim in (("large", 192), ("xlarge", 256), ("huge", 352)) for lv in (3, 4)},
}


def timm_architecture(cfg: FocalNetConfig) -> tuple[str | None, dict[str, Any]]:
    """``(timm model name, model_args)`` that build ``cfg``'s architecture in timm: the registered
    ``focalnet_*`` whose fixed knobs all match (the most specific one), and the other knobs as arguments;
    ``(None, all arguments of timm's FocalNet class)`` when no registered model fits."""
    args = timm_model_args(cfg)
    fits = [(len(fixed), name) for name, fixed in TIMM_ARCHITECTURES.items()
            if all(args.get(k) == v for k, v in fixed.items())]
    if not fits:
        return None, args
    name = max(fits)[1]
    return name, {k: v for k, v in args.items() if k not in TIMM_ARCHITECTURES[name]}


def timm_model_args(cfg: FocalNetConfig) -> dict[str, Any]:
    """Keyword arguments of timm's ``FocalNet`` class that build ``cfg``'s architecture."""
    return {
        "embed_dim": cfg.embed_dim, "depths": list(cfg.depths), "mlp_ratio": cfg.mlp_ratio,
        "focal_levels": list(cfg.focal_levels), "focal_windows": list(cfg.focal_windows),
        "use_overlap_down": cfg.use_conv_embed, "use_post_norm": cfg.use_postln,
        "use_post_norm_in_modulation": cfg.use_postln_in_modulation, "normalize_modulator": cfg.normalize_modulator,
        "layerscale_value": cfg.layerscale_value if cfg.use_layerscale else None,
        "num_classes": cfg.num_classes, "in_chans": cfg.in_chans,
    }


@register_exporter("hf", "Hugging Face transformers: model.safetensors + config.json (save_pretrained layout)")
def _to_hf(model, folder: Path) -> Export:
    from .checkpoint import state_dict_in_layout
    from .hf_config import config_to_hf

    cfg = model.config
    sd = state_dict_in_layout(model, "hf")
    _save_safetensors(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")

    def load(f: Path) -> Callable:
        from .factory import create_model

        return create_model(checkpoint=f).eval()  # config.json + weights, through layout detection

    return Export(
        {"model.safetensors": "weights in transformers' layout", "config.json": "transformers FocalNetConfig"},
        "```python\nfrom transformers import FocalNetForImageClassification\n"
        "model = FocalNetForImageClassification.from_pretrained(\"PATH/TO/THIS/FOLDER\").eval()\n"
        "logits = model(pixel_values).logits\n```", "transformers", load)


# ---------------------------------------------------------------------------- programs
def _example(cfg: FocalNetConfig, batch: int = 1) -> torch.Tensor:
    import torch

    return torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, generator=torch.Generator().manual_seed(1))


def _dynamic_batch() -> dict:
    import torch

    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


@contextlib.contextmanager
def tracing_mode(model: torch.nn.Module, example: torch.Tensor):
    """No grad and the reference path (no CPU fast path in a graph); one eager call first, so that what
    modules compute once and keep (window attention's index and mask tables) exists before tracing and is
    captured as a constant rather than assigned during the trace."""
    import torch

    from .fastpath import reference_path

    with reference_path(), torch.no_grad():
        model(example)
        yield


@register_exporter("torch-export", "a torch.export program in model.pt2 (dynamic batch)")
def _to_torch_export(model, folder: Path) -> Export:
    import torch

    cfg = model.config
    x = _example(cfg, 2)
    with tracing_mode(model, x):
        program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, str(folder / "model.pt2"))

    def load(f: Path) -> Callable:
        return torch.export.load(str(f / "model.pt2")).module()

    return Export(
        {"model.pt2": f"torch.export program: input (B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}), logits out"},
        "```python\nimport torch\nmodel = torch.export.load(\"model.pt2\").module()\nlogits = model(images)\n```",
        "pytorch", load)


@register_exporter("onnx", "an ONNX graph in model.onnx (input pixel_values, output logits; dynamic batch)")
def _to_onnx(model, folder: Path) -> Export:
    import torch

    cfg = model.config
    try:
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError:
        raise ConfigError("--to onnx: needs the onnx and onnxscript packages (pip install 'focalexp[export]')") from None
    x = _example(cfg, 2)
    with tracing_mode(model, x), _quiet():
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["pixel_values"],
                                    output_names=_output_names(cfg), dynamic_shapes=_dynamic_batch(), verbose=False)
    program.save(str(folder / "model.onnx"))
    return Export(
        {"model.onnx": f"ONNX graph: pixel_values (B, {cfg.in_chans}, {cfg.img_size}, {cfg.img_size}) -> logits"},
        "```python\nimport onnxruntime as ort\nsession = ort.InferenceSession(\"model.onnx\")\n"
        "logits = session.run(None, {\"pixel_values\": images})[0]\n```", "onnx", _onnx_runner)


def _output_names(cfg: FocalNetConfig) -> list[str]:
    """``logits``, or ``features_{i}`` for each stage a backbone returns."""
    return ["logits"] if cfg.out_indices is None else [f"features_{i}" for i in cfg.out_indices]


def _onnx_runner(folder: Path) -> Callable | None:
    """onnxruntime when installed, else onnx's reference evaluator (slow: small models only)."""
    import torch

    path = str(folder / "model.onnx")
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda x: [torch.from_numpy(o) for o in session.run(None, {"pixel_values": x.numpy()})]
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(path)
        return lambda x: [torch.from_numpy(o) for o in ev.run(None, {"pixel_values": x.numpy()})]


@contextlib.contextmanager
def _quiet():
    """torch's ONNX exporter prints its progress to stdout and warns about its own internals: not ours to show."""
    import io
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------- model card
def model_card(cfg: FocalNetConfig, exporter: Exporter, written: Export, meta: Mapping[str, Any]) -> str:
    """README.md of an export folder: what it holds, the config, the run's results, the check, how to load it."""
    base = FocalNetConfig()
    differs = {k: v for k, v in cfg.to_dict().items() if v != base.to_dict()[k]}
    lines = [
        "---",
        f"library_name: {written.library}",
        "tags: [image-classification, focalnet, focal-modulation, focalexp]",
        "---",
        "",
        f"# FocalNet ({exporter.name} export)",
        "",
        f"Focal Modulation Network (Yang et al., NeurIPS 2022), exported by focalexp {meta['focalexp']} "
        f"(torch {meta['torch']}) on {meta['created']}" + (f" from `{meta['source']}`." if meta.get("source") else "."),
        "",
        "## Files",
        "",
        "| file | content |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in written.files.items()],
        "| `export.json` | this card's facts, machine-readable |",
        "",
        "## Architecture",
        "",
        f"{cfg.num_stages} stage(s), depths {list(cfg.depths)}, channels {list(cfg.stage_dims)}, "
        f"kernels per stage {[list(cfg.stage_kernels(i)) for i in range(cfg.num_stages)]}, "
        f"{cfg.num_classes} classes, input {cfg.in_chans}x{cfg.img_size}x{cfg.img_size}.",
        "",
        "| knob | value |",
        "|---|---|",
        *[f"| `{k}` | `{json.dumps(v)}` |" for k, v in cfg.to_dict().items()],
        "",
        f"Knobs that differ from FocalNetConfig's defaults: {', '.join(f'`{k}`' for k in differs) or 'none'}.",
        "",
    ]
    results = meta.get("results")
    lines += ["## Results", ""]
    if results:
        lines += ["From the run's `result.json`:", "", "| metric | value |", "|---|---|",
                  *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items()], ""]
    else:
        lines += ["No `result.json` beside the checkpoint: no evaluation results recorded.", ""]
    lines += ["## Check", ""]
    if meta.get("max_abs_diff") is not None:
        lines += [f"The written files were read back and run on a random batch: the largest difference from the "
                  f"original model's logits is {meta['max_abs_diff']:.3g}.", ""]
    else:
        lines += ["Not checked (--no-check).", ""]
    lines += ["## Use", "", written.usage, ""]
    return "\n".join(lines)
