"""The run config: ``model`` (a preset + overrides), ``data``, ``train``, ``eval``; recipes; resolution.

Resolution order: the recipe's defaults, then the YAML file, then ``--set`` overrides (dotted keys:
``train.epochs=2``, ``model.embed_dim=16``). The result is validated as a whole (the model is built
on the meta device, data paths are checked) before anything is written, and every error is one line
naming the dotted key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..config import apply_overrides, build, content_hash, deep_merge, load_yaml, to_plain
from ..config import opt as _f  # (a field below is named `opt`)
from ..data.config import DataConfig, check_data, default_img_size, input_channels, num_classes_of
from ..errors import ConfigError, FocalexpError, closest, did_you_mean
from .trackers import check_trackers


@dataclass
class TrainConfig:
    epochs: int = _f(4, "training epochs", min=1)
    batch_size: int = _f(128, "global batch size (split over ranks)", min=1)
    lr: float = _f(2e-3, "peak learning rate at batch lr_base_batch (scaled linearly with the batch)", min=0.0)
    lr_base_batch: int = _f(128, "the batch size lr is stated for", min=1)
    min_lr: float = _f(1e-5, "final learning rate of the cosine schedule", min=0.0)
    warmup_lr: float = _f(1e-6, "learning rate at the start of warm-up", min=0.0)
    warmup_epochs: float = _f(0.5, "linear warm-up length (fractions allowed)", min=0.0)
    sched: str = _f("cosine", "timm scheduler", choices=("cosine", "step", "multistep", "poly", "tanh"))
    decay_epochs: float = _f(30.0, "step schedule: epochs between decays", min=0.0)
    decay_rate: float = _f(0.1, "step schedule: factor per decay", min=0.0)
    opt: str = _f("adamw", "timm optimizer name")
    opt_eps: float = _f(1e-8, "optimizer epsilon", min=0.0)
    betas: list[float] = _f([0.9, 0.999], "Adam betas")
    weight_decay: float = _f(0.05, "weight decay", min=0.0)
    weight_decay_mode: str = _f(
        "skip_norm_bias", "skip_norm_bias (no decay on norms, biases, gammas); all; official_none "
        "(the official code's quirk: decay off for every parameter)", choices=("skip_norm_bias", "all", "official_none"))
    clip_grad: Optional[float] = _f(None, "clip the gradient norm to this value", min=0.0)
    mixup: float = _f(0.0, "mixup alpha (0 = off)", min=0.0)
    cutmix: float = _f(0.0, "cutmix alpha (0 = off)", min=0.0)
    mixup_prob: float = _f(1.0, "probability of applying mixup/cutmix to a batch", min=0.0, max=1.0)
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on", min=0.0, max=1.0)
    smoothing: float = _f(0.0, "label smoothing", min=0.0, max=1.0)
    ema: bool = _f(False, "keep an exponential moving average of the weights (evaluated beside them)")
    ema_decay: float = _f(0.9998, "EMA decay per step", min=0.0, max=1.0)
    amp: str = _f("none", "autocast precision", choices=("none", "bf16", "fp16"))
    channels_last: bool = _f(True, "feed inputs channels-last (the model is channels-last inside)")
    compile: bool = _f(False, "torch.compile the model")
    grad_checkpointing: bool = _f(False, "activation checkpointing per block")
    device: str = _f("auto", "auto (cuda if available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    threads: Optional[int] = _f(None, "torch CPU threads (default: torch's choice; at most 256: 4096 on 2 cores "
                                 "ran for minutes)", min=1, max=256)
    checkpoint_every_steps: Optional[int] = _f(None, "also save last.pth every N steps (and always per epoch)", min=1)
    stop_after_epochs: Optional[int] = _f(
        None, "end this process after N epochs (a later run resumes): for staged or tested preemption", min=1)
    trackers: list[str] = _f(["tensorboard"], "where the run logs its scalars (rank 0): tensorboard (RUN/tb/), "
                             "wandb, mlflow, or a tracker a package registers; [] for none")
    log_every: int = _f(50, "log per-step scalars (loss, lr, images/s, grad norm, memory) every N steps", min=1)


@dataclass
class EvalConfig:
    batch_size: Optional[int] = _f(None, "evaluation batch (default: the training batch)", min=1)
    every_epochs: int = _f(1, "evaluate every N epochs (and after the last)", min=1)


RECIPES: dict[str, dict[str, Any]] = {
    # small CPU runs on the built-in dataset: a few minutes on 2 cores
    "cpu_small": {
        "model": {"preset": "focalnet_micro"},
        "data": {"dataset": "pathfinder"},
        "train": {"epochs": 4, "batch_size": 128, "lr": 2e-3, "lr_base_batch": 128, "warmup_epochs": 0.5,
                  "weight_decay": 0.05, "threads": None},
    },
    # the paper's ImageNet-1K recipe (App. A.2, Table 18); drop path comes with each preset
    "imagenet_paper": {
        "model": {"preset": "focalnet_t_srf"},
        "data": {"dataset": "imagefolder", "root": "${IMAGENET_ROOT}", "img_size": 224, "workers": 8,
                 "auto_augment": "rand-m9-mstd0.5-inc1", "color_jitter": 0.4, "reprob": 0.25, "remode": "pixel",
                 "interpolation": "bicubic", "crop_pct": 0.875},
        "train": {"epochs": 300, "batch_size": 1024, "lr": 5e-4, "lr_base_batch": 512, "min_lr": 1e-5,
                  "warmup_lr": 1e-6, "warmup_epochs": 20, "weight_decay": 0.05, "clip_grad": 5.0,
                  "mixup": 0.8, "cutmix": 0.8, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "smoothing": 0.1,
                  "amp": "bf16"},
        "eval": {"batch_size": 256},
    },
}


@dataclass
class RunConfig:
    recipe: str = _f("cpu_small", "defaults to start from", choices=tuple(RECIPES))
    seed: int = _f(0, "seed of everything random in the run", min=0)
    model: dict = field(default_factory=dict, metadata={"help": "preset: NAME plus any FocalNetConfig knob"})
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def experiment_dict(self) -> dict[str, Any]:
        """The config without operational knobs (threads, workers, checkpoint cadence, staged stops,
        trackers and their cadence), which change how a run is executed but not what it computes."""
        d = self.to_dict()
        for section, key in OPERATIONAL_KEYS:
            d[section].pop(key, None)
        return d

    @property
    def run_id(self) -> str:
        """Content hash of the experiment: equal experiments, equal ids (resume and sweeps rely on it)."""
        return content_hash(self.experiment_dict())

    @classmethod
    def from_resolved(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Rebuild a config that :func:`resolve_run_config` produced (``to_dict()``), without validating it
        again: what a sweep carries to the node was validated once, in the spec's expansion."""
        return cls(recipe=d["recipe"], seed=d["seed"], model=dict(d["model"]), data=DataConfig(**d["data"]),
                   train=TrainConfig(**d["train"]), eval=EvalConfig(**d["eval"]))

    def model_config(self):
        """The model section as a :class:`FocalNetConfig`. Errors carry the key inside the section
        (``depths``; an unknown preset is ``preset``); :func:`validate` puts them under ``model``."""
        from ..models.presets import canonical_name, resolve_config

        preset = self.model.get("preset") if isinstance(self.model, Mapping) else None
        if isinstance(preset, str):
            try:
                canonical_name(preset)
            except FocalexpError as e:
                raise e.under("preset") from e
        return resolve_config(self.model)


SECTIONS = ("recipe", "seed", "model", "data", "train", "eval")
OPERATIONAL_KEYS = (("train", "threads"), ("data", "workers"), ("train", "checkpoint_every_steps"),
                    ("train", "stop_after_epochs"), ("train", "trackers"), ("train", "log_every"))


def _closest_section(name: str) -> str | None:
    hits = closest(name, SECTIONS, n=1)
    return hits[0] if hits else None


def _recipe_name(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    name = overrides.get("recipe", raw.get("recipe", "cpu_small"))
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}{did_you_mean(str(name), RECIPES)}; "
                          f"allowed: {', '.join(RECIPES)}", key="recipe")
    return name


def resolve_run_config(
    raw: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    model: str | None = None,
    *,
    check_data_present: bool = True,
) -> RunConfig:
    """A validated :class:`RunConfig` from a parsed YAML mapping, dotted overrides and a model name.

    ``model`` (``--model NAME``) replaces the preset and clears the recipe's model overrides.
    ``check_data_present=False`` validates everything but the data on disk (a sweep's dry run, or a
    launcher whose data lives on the cluster); the model's ``num_classes`` must then be given for
    datasets whose classes are read from disk.
    """
    raw = dict(raw or {})
    overrides = dict(overrides or {})
    for k in raw:
        if k not in SECTIONS:
            raise ConfigError(key=str(k), unknown=True, suggestion=_closest_section(str(k)))
    for k in overrides:
        if k.split(".")[0] not in SECTIONS:
            raise ConfigError(key=k, unknown=True, suggestion=_closest_section(k.split(".")[0]))
    recipe = _recipe_name(raw, overrides)
    merged = deep_merge(copy.deepcopy(RECIPES[recipe]), raw)
    merged["recipe"] = recipe
    if model is not None:
        merged["model"] = {"preset": model}
    merged = apply_overrides(merged, overrides)
    if not isinstance(merged.get("model", {}), Mapping):
        raise ConfigError(f"expected a mapping (preset: NAME plus knobs), got {merged['model']!r}", key="model")
    cfg: RunConfig = build(RunConfig, merged)
    _complete_model(cfg, check_data_present)
    validate(cfg, check_data_present)
    return cfg


def _complete_model(cfg: RunConfig, data_present: bool = True) -> None:
    """Fill the model's num_classes / img_size / in_chans from the data unless the config sets them."""
    if "preset" not in cfg.model:
        raise ConfigError("name a preset (see `focalexp models`), e.g. model: {preset: focalnet_t_srf}", key="model.preset")
    m = cfg.model
    img = default_img_size(cfg.data)
    if cfg.data.img_size is None:
        cfg.data.img_size = img
    m.setdefault("img_size", img)
    if m["img_size"] != img:
        raise ConfigError(f"{m['img_size']} differs from data.img_size {img}; set one of them", key="model.img_size")
    chans = input_channels(cfg.data)
    if chans[0] != 3:  # a grayscale dataset: its own channel count unless the model asks for 3
        m.setdefault("in_chans", chans[0])
    in_chans = m.get("in_chans", 3)
    if isinstance(in_chans, int) and not isinstance(in_chans, bool) and in_chans not in chans:  # types: the model's check
        raise ConfigError(f"{m['in_chans']}, but {cfg.data.dataset} images feed "
                          f"{' or '.join(map(str, chans))} (grayscale is repeated to 3)" if len(chans) > 1 else
                          f"{m['in_chans']}, but {cfg.data.dataset} images have {chans[0]} channels",
                          key="model.in_chans")
    if not data_present and cfg.data.dataset == "imagefolder":
        if "num_classes" not in m:
            raise ConfigError("set it (e.g. 1000 for ImageNet-1K) when the data is not "
                              "checked on this machine", key="model.num_classes")
        return
    ncls = num_classes_of(cfg.data)
    m.setdefault("num_classes", ncls)
    if m["num_classes"] != ncls:
        raise ConfigError(f"{m['num_classes']} but the dataset has {ncls} classes", key="model.num_classes")


def validate(cfg: RunConfig, data_present: bool = True) -> None:
    """Everything that can be checked before a run starts, without torch; errors name the dotted key.
    The model config's own validation is complete (every knob combination it accepts builds: a test
    builds a random sample), so no module is built here."""
    try:
        cfg.model_config()
    except FocalexpError as e:
        raise e.under("model") from e
    check_data(cfg.data, on_disk=data_present)
    t = cfg.train
    # a run that says cpu trains on this machine's memory; elsewhere (auto, cuda) only the size cap here,
    # the memory when the run starts on its machine (Trainer)
    check_memory(cfg, memory_gb=None if t.device == "cpu" else float("inf"))
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"expected two values in [0, 1), got {t.betas}", key="train.betas")
    if t.warmup_epochs >= t.epochs and t.epochs > 1:
        raise ConfigError(f"{t.warmup_epochs} is not shorter than train.epochs {t.epochs}", key="train.warmup_epochs")
    check_optimizer(t.opt)
    check_trackers(t.trackers)
    if (t.mixup or t.cutmix) and cfg.data.dataset == "pathfinder":
        raise ConfigError("mixing pathfinder images destroys their labels (connected or not); keep 0", key="train.mixup")
    if t.amp == "fp16" and t.device == "cpu":
        raise ConfigError("fp16 autocast needs a GPU; use bf16 on CPU", key="train.amp")


def check_memory(cfg: RunConfig, processes: int = 1, memory_gb: float | None = None) -> None:
    """Refuse a run whose model, AdamW state and batch certainly cannot fit this machine's memory
    (``memory_gb``, default: this machine's), or whose model is beyond the size cap anywhere; one line
    naming the key to change (:mod:`focalexp.models.footprint`)."""
    from ..models.footprint import activation_bytes, approx_params, check_training_fits, inference_bytes

    from ..data.config import train_size_at_most

    n_train = train_size_at_most(cfg.data)
    if n_train is not None and cfg.train.batch_size > n_train:
        return  # the trainer says what is wrong: the batch is larger than the training set
    img, ckpt = cfg.data.img_size or 0, cfg.train.grad_checkpointing

    def need(m):
        return approx_params(m), activation_bytes(m.replace(use_checkpoint=True) if ckpt else m, img)

    check_training_fits(cfg.model, need, cfg.train.batch_size, processes, memory_gb=memory_gb,
                        eval_batch=cfg.eval.batch_size,
                        eval_per_image=inference_bytes(cfg.model_config(), img) if cfg.eval.batch_size else 0)


def check_nproc(nproc: int) -> None:
    """Local training processes: at least one, at most one per usable core."""
    from ..fileio import usable_cores

    if nproc < 1:
        raise ConfigError(f"--nproc: expected >= 1, got {nproc}")
    if nproc > usable_cores():
        raise ConfigError(f"--nproc: {nproc} processes, but this machine has {usable_cores()} cores")


# timm optimizer names accepted without importing timm (a test checks that timm has every one of them)
COMMON_OPTIMIZERS = frozenset({
    "adamw", "adam", "sgd", "momentum", "nesterov", "lamb", "lars", "lion", "rmsprop", "rmsproptf", "adafactor",
    "nadam", "nadamw", "radam", "adan", "adopt", "adamp", "sgdp", "madgrad", "novograd", "adabelief"})


def check_optimizer(name: str) -> None:
    """``train.opt`` must be one of timm's optimizers; common names pass without importing timm."""
    if name.lower() in COMMON_OPTIMIZERS:
        return
    from timm.optim import list_optimizers

    if name.lower() not in list_optimizers():
        raise ConfigError(f"unknown optimizer '{name}'{did_you_mean(name, list_optimizers())}", key="train.opt")


def load_run_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None,
                    model: str | None = None) -> RunConfig:
    """Read a run config YAML (or none: the recipe's defaults) and resolve it."""
    raw = load_yaml(path, "config") if path is not None else {}
    if raw is None:
        raise ConfigError(f"'{path}' is empty; a run config is a mapping with sections "
                          f"{', '.join(SECTIONS)}", key="config")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{path}': expected a mapping with sections {', '.join(SECTIONS)}, "
                          f"got a {type(raw).__name__}", key="config")
    if "grid" in raw or ("base" in raw and "name" in raw):
        raise ConfigError(f"'{path}' looks like a sweep spec (it has {'grid' if 'grid' in raw else 'base'}:), "
                          f"not a run config; run it with `focalexp sweep {path}`", key="config")
    return resolve_run_config(raw, overrides, model)
