"""The detection run config: ``model`` (the backbone), ``detector``, ``data``, ``train``, ``eval``; recipes.

Resolution is the classifier's (:mod:`focalexp.train.config`): the recipe's defaults, then the YAML file,
then dotted overrides; validated as a whole before anything is written; every error one line naming the
dotted key. The backbone is a focalexp FocalNet (``model: {preset: NAME, ...knobs}``) or a timm model
(``model: {timm: swin_tiny_patch4_window7_224, ...}``: the paper's Swin and ConvNeXt comparisons).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from ..config import apply_overrides, build, content_hash, deep_merge, load_yaml, to_plain
from ..config import opt as _f
from ..errors import ConfigError, FocalexpError, closest, did_you_mean
from ..train.config import TrainConfig, check_optimizer
from ..train.trackers import check_trackers

ARCHS = ("maskrcnn", "fasterrcnn", "retinanet", "fcos")
DET_DATASETS = ("shapes", "coco")
# anchor size / feature stride: torchvision's (and mmdet's) defaults per detector
ANCHOR_SCALE = {"maskrcnn": 8.0, "fasterrcnn": 8.0, "retinanet": 4.0, "fcos": 1.0}
# timm keyword arguments a spec may set on a timm backbone (plain values only)
TIMM_KWARGS = ("drop_path_rate", "drop_rate", "img_size", "window_size")


@dataclass
class DetectorConfig:
    arch: str = _f("maskrcnn", "torchvision detector: maskrcnn (Mask R-CNN with FPN, the paper's), fasterrcnn, "
                   "retinanet or fcos (one-stage)", choices=ARCHS)
    backbone_init: str = _f("random", "random; a classification run dir (its best.pth); or a weights file "
                            "(official, timm, Hugging Face or focalexp layout)")
    fpn_channels: int = _f(256, "FPN output channels", min=8)
    anchor_scale: Optional[float] = _f(None, "anchor size / stride of its level (default: 8 for R-CNNs, 4 for "
                                       "RetinaNet, 1 for FCOS: torchvision's)", min=0.1)
    min_size: list[int] = _f([800], "shorter side at training (one drawn per image: multi-scale) ; the last "
                             "is the test size")
    max_size: int = _f(1333, "longer side at most", min=16)
    representation_size: int = _f(1024, "R-CNN box head: MLP width", min=8)
    mask_channels: int = _f(256, "Mask R-CNN mask head: conv width", min=8)
    mask_layers: int = _f(4, "Mask R-CNN mask head: 3x3 convs", min=1, max=32)
    rpn_batch_size_per_image: int = _f(256, "RPN anchors sampled per image", min=1)
    box_batch_size_per_image: int = _f(512, "R-CNN RoIs sampled per image", min=1)
    rpn_proposals_train: int = _f(2000, "RPN proposals kept per image at training (per level before NMS)", min=1)
    rpn_proposals_test: int = _f(1000, "RPN proposals kept per image at test", min=1)
    detections_per_img: int = _f(100, "detections kept per image (COCO's maxDets)", min=1)
    score_thresh: float = _f(0.05, "detections below this score are dropped", min=0.0, max=1.0)
    out_norm: bool = _f(True, "a LayerNorm on each backbone output (the official detection backbone's norm{i})")
    frozen_stages: int = _f(-1, "freeze the stem and the first N stages (-1: none)", min=-1)


@dataclass
class DetDataConfig:
    dataset: str = _f("shapes", "shapes (built in, generated from the seed) or coco ($COCO_ROOT or root, the "
                      "2017 layout)", choices=DET_DATASETS)
    root: Optional[str] = _f(None, "coco: the root (default $COCO_ROOT); $VARS expanded")
    img_size: int = _f(64, "shapes: image side in pixels", min=16, max=128)
    train_size: Optional[int] = _f(None, "training images (shapes: generated, default 2000; coco: a cap)", min=1)
    val_size: Optional[int] = _f(None, "validation images (shapes: default 500; coco: a cap)", min=1)
    max_objects: int = _f(6, "shapes: objects per image at most", min=1, max=100)
    frame_rate: float = _f(0.25, "shapes: how often a square or triangle is framed too", min=0.0, max=1.0)
    hflip: float = _f(0.5, "horizontal flip probability at training", min=0.0, max=1.0)
    workers: int = _f(0, "DataLoader worker processes (at most 64)", min=0, max=64)


@dataclass
class DetTrainConfig(TrainConfig):
    decay_milestones: list[float] = _f([], "multistep schedule: epochs at which lr is multiplied by decay_rate "
                                       "(1x: [8, 11] of 12; 3x: [27, 33] of 36)")


@dataclass
class DetEvalConfig:
    batch_size: Optional[int] = _f(None, "evaluation batch (default: the training batch)", min=1)
    every_epochs: int = _f(1, "evaluate (COCOeval) every N epochs (and after the last)", min=1)


_PAPER_TRAIN = {"opt": "adamw", "lr": 1e-4, "lr_base_batch": 16, "batch_size": 16, "weight_decay": 0.05,
                "sched": "multistep", "decay_rate": 0.1, "warmup_epochs": 0.07, "warmup_lr": 1e-7, "min_lr": 0.0,
                "clip_grad": None, "amp": "bf16", "channels_last": False}
_COCO_DATA = {"dataset": "coco", "root": "${COCO_ROOT}", "workers": 8}
# multi-scale training as in the paper's (Swin's) Mask R-CNN recipes: shorter side 480..800 step 32
_MULTISCALE = list(range(480, 801, 32))

RECIPES: dict[str, dict[str, Any]] = {
    # CPU-sized: Shapes-det at 64 px, a micro FocalNet, slim heads; a few minutes on 2 cores
    "det_cpu_small": {
        "model": {"preset": "focalnet_micro", "patch_size": 4},
        "detector": {"arch": "maskrcnn", "fpn_channels": 64, "anchor_scale": 2.0, "min_size": [64], "max_size": 64,
                     "representation_size": 256, "mask_channels": 32, "mask_layers": 1,
                     "rpn_batch_size_per_image": 128, "box_batch_size_per_image": 32,
                     "rpn_proposals_train": 300, "rpn_proposals_test": 150, "detections_per_img": 50},
        "data": {"dataset": "shapes", "img_size": 64, "train_size": 2000, "val_size": 500},
        "train": {"epochs": 4, "batch_size": 16, "lr": 1e-3, "lr_base_batch": 16, "warmup_epochs": 0.25,
                  "weight_decay": 0.05, "sched": "cosine", "min_lr": 1e-5, "channels_last": False, "log_every": 20},
    },
    # the paper's Mask R-CNN 1x on COCO (App. B / Swin's recipe): AdamW 1e-4 at batch 16, wd 0.05,
    # 12 epochs with steps at 8 and 11, multi-scale training, warm-up ~500 iterations
    "coco_1x": {
        # kernels grown by 6 (9, 11) as the paper's detection backbone: ImageNet kernels are zero-padded
        "model": {"preset": "focalnet_t_srf", "drop_path_rate": 0.2, "focal_windows": 9},
        "detector": {"arch": "maskrcnn", "min_size": _MULTISCALE, "max_size": 1333},
        "data": _COCO_DATA,
        "train": {**_PAPER_TRAIN, "epochs": 12, "decay_milestones": [8, 11]},
        "eval": {"batch_size": 16},
    },
    # 3x: 36 epochs with steps at 27 and 33
    "coco_3x": {
        "model": {"preset": "focalnet_t_srf", "drop_path_rate": 0.3, "focal_windows": 9},
        "detector": {"arch": "maskrcnn", "min_size": _MULTISCALE, "max_size": 1333},
        "data": _COCO_DATA,
        "train": {**_PAPER_TRAIN, "epochs": 36, "decay_milestones": [27, 33]},
        "eval": {"batch_size": 16},
    },
}

SECTIONS = ("recipe", "seed", "model", "detector", "data", "train", "eval")
OPERATIONAL_KEYS = (("train", "threads"), ("data", "workers"), ("train", "checkpoint_every_steps"),
                    ("train", "stop_after_epochs"), ("train", "trackers"), ("train", "log_every"))
SHAPES_DEFAULT_SIZES = (2000, 500)


@dataclass
class DetectConfig:
    recipe: str = _f("det_cpu_small", "defaults to start from", choices=tuple(RECIPES))
    seed: int = _f(0, "seed of everything random in the run", min=0)
    model: dict = field(default_factory=dict, metadata={
        "help": "the backbone: preset: NAME plus FocalNet knobs, or timm: NAME (drop_path_rate, img_size, ...)"})
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    data: DetDataConfig = field(default_factory=DetDataConfig)
    train: DetTrainConfig = field(default_factory=DetTrainConfig)
    eval: DetEvalConfig = field(default_factory=DetEvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def experiment_dict(self) -> dict[str, Any]:
        """The config without operational knobs (they change how a run executes, not what it computes)."""
        d = self.to_dict()
        for section, key in OPERATIONAL_KEYS:
            d[section].pop(key, None)
        return d

    @property
    def run_id(self) -> str:
        """Content hash of the experiment (the task's name included: never a classifier's id)."""
        return content_hash({"task": "detect", **self.experiment_dict()})

    @classmethod
    def from_resolved(cls, d: Mapping[str, Any]) -> "DetectConfig":
        return cls(recipe=d["recipe"], seed=d["seed"], model=dict(d["model"]), detector=DetectorConfig(**d["detector"]),
                   data=DetDataConfig(**d["data"]), train=DetTrainConfig(**d["train"]), eval=DetEvalConfig(**d["eval"]))

    @staticmethod
    def resolve_saved(raw: Mapping[str, Any]) -> "DetectConfig":
        """A saved ``config.yaml`` of a detection run dir, resolved again (the data is not checked)."""
        return resolve_detect_config(raw, check_data_present=False)

    @property
    def is_timm(self) -> bool:
        return "timm" in self.model

    def backbone_config(self):
        """The FocalNet config of a focalexp backbone (backbone mode: every stage out)."""
        from ..models.presets import resolve_config

        knobs = {k: v for k, v in self.model.items()}
        return resolve_config(knobs)

    def sizes(self) -> tuple[Optional[int], Optional[int]]:
        """Training and validation images (shapes: generated; coco: caps, None = all)."""
        d = self.data
        if d.dataset == "shapes":
            return d.train_size or SHAPES_DEFAULT_SIZES[0], d.val_size or SHAPES_DEFAULT_SIZES[1]
        return d.train_size, d.val_size


def _recipe_name(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    name = overrides.get("recipe", raw.get("recipe", "det_cpu_small"))
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}{did_you_mean(str(name), RECIPES)}; "
                          f"allowed: {', '.join(RECIPES)}", key="recipe")
    return name


def resolve_detect_config(raw: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
                          *, check_data_present: bool = True) -> DetectConfig:
    """A validated :class:`DetectConfig` from a parsed YAML mapping and dotted overrides."""
    raw = dict(raw or {})
    overrides = dict(overrides or {})
    for k in [*raw, *(o.split(".")[0] for o in overrides)]:
        if k not in SECTIONS:
            hits = closest(str(k), SECTIONS, n=1)
            raise ConfigError(key=str(k), unknown=True, suggestion=hits[0] if hits else None)
    recipe = _recipe_name(raw, overrides)
    merged = deep_merge(copy.deepcopy(RECIPES[recipe]), raw)
    recipe_kind = "timm" if "timm" in RECIPES[recipe]["model"] else "preset"
    if isinstance(raw.get("model"), Mapping) and ({"timm", "preset"} - {recipe_kind}) & set(raw["model"]):
        merged["model"] = dict(raw["model"])  # a timm backbone replaces the recipe's FocalNet (and back)
    merged["recipe"] = recipe
    model_over = {k: v for k, v in overrides.items() if k in ("model.timm", "model.preset")}
    if model_over:  # switching the kind of backbone drops the other kind's knobs
        kind = "timm" if "model.timm" in model_over else "preset"
        other = "preset" if kind == "timm" else "timm"
        if isinstance(merged.get("model"), Mapping) and other in merged["model"]:
            merged["model"] = {}
    merged = apply_overrides(merged, overrides)
    if not isinstance(merged.get("model", {}), Mapping):
        raise ConfigError(f"expected a mapping (preset: NAME or timm: NAME, plus knobs), got {merged['model']!r}",
                          key="model")
    cfg: DetectConfig = build(DetectConfig, merged)
    validate(cfg, check_data_present)
    return cfg


def _check_model(cfg: DetectConfig) -> None:
    m = cfg.model
    if ("preset" in m) == ("timm" in m):
        raise ConfigError("name the backbone: preset: NAME (a FocalNet, `focalexp models`) or timm: NAME "
                          "(a timm model, e.g. swin_tiny_patch4_window7_224)", key="model")
    if "timm" in m:
        name = m["timm"]
        if not isinstance(name, str):
            raise ConfigError(f"expected a timm model name, got {name!r}", key="model.timm")
        for k, v in m.items():
            if k == "timm":
                continue
            if k not in TIMM_KWARGS:
                raise ConfigError(key=f"model.{k}", unknown=True, suggestion=(closest(k, TIMM_KWARGS, n=1) or [None])[0])
            if not isinstance(v, (int, float, str, list)) or isinstance(v, bool):
                raise ConfigError(f"expected a number, a name or a list, got {v!r}", key=f"model.{k}")
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model '{name}'{did_you_mean(name, timm.list_models())}",
                              key="model.timm")
        return
    from ..models.presets import canonical_name

    for k in ("num_classes", "out_indices"):
        if k in m:
            raise ConfigError("a detection backbone sets it itself (every stage into the FPN, no classifier)",
                              key=f"model.{k}")
    try:
        if isinstance(m.get("preset"), str):
            try:
                canonical_name(m["preset"])
            except FocalexpError as e:
                raise e.under("preset") from e
        cfg.backbone_config()
    except FocalexpError as e:
        raise e.under("model") from e


def _check_init(cfg: DetectConfig, on_disk: bool) -> None:
    init = cfg.detector.backbone_init
    if init == "random" or not on_disk:
        return
    path = os.path.expandvars(os.path.expanduser(init))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "best.pth")) and not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"'{init}' is a folder without best.pth (a classification run dir) or config.json "
                              "(a Hugging Face folder)", key="detector.backbone_init")
    elif not os.path.isfile(path):
        raise ConfigError(f"'{init}' is neither 'random', a run dir nor a weights file", key="detector.backbone_init")
    if cfg.is_timm and os.path.isdir(path):
        raise ConfigError("a timm backbone starts from a weights file, not a run dir", key="detector.backbone_init")


def validate(cfg: DetectConfig, data_present: bool = True) -> None:
    """Everything that can be checked before a run starts; errors name the dotted key."""
    _check_model(cfg)
    d, det, t = cfg.data, cfg.detector, cfg.train
    if not det.min_size or not all(isinstance(s, int) and 16 <= s <= det.max_size for s in det.min_size):
        raise ConfigError(f"expected sizes between 16 and detector.max_size {det.max_size}, got {det.min_size}",
                          key="detector.min_size")
    if det.arch == "fcos" and det.fpn_channels % 32:
        raise ConfigError(f"FCOS's head normalises in 32 groups: give a multiple of 32, got {det.fpn_channels}",
                          key="detector.fpn_channels")
    if d.dataset == "coco":
        if data_present:
            from ..data.coco import coco_root_files

            root = d.root and os.path.expandvars(d.root)
            if root and "$" in root:
                raise ConfigError(f"{d.root}: an environment variable in it is not set (export COCO_ROOT=...)",
                                  key="data.root")
            for split in ("train", "val"):
                coco_root_files(root, split)
    elif d.root is not None:
        raise ConfigError("shapes is generated from the seed; it has no root", key="data.root")
    else:
        from ..fileio import check_generated_fits

        # measured peak while generating 8,000 64 px images: 30 KB each (pixels, masks, the COCO dicts)
        check_generated_fits(*cfg.sizes(), 3 * 3 * d.img_size ** 2, f"{d.img_size} px Shapes-det images")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"expected two values in [0, 1), got {t.betas}", key="train.betas")
    if t.warmup_epochs >= t.epochs and t.epochs > 1:
        raise ConfigError(f"{t.warmup_epochs} is not shorter than train.epochs {t.epochs}", key="train.warmup_epochs")
    ms = t.decay_milestones
    if ms and (sorted(ms) != list(ms) or not all(0 < m < t.epochs for m in ms)):
        raise ConfigError(f"expected increasing epochs inside (0, {t.epochs}), got {ms}", key="train.decay_milestones")
    if ms and t.sched != "multistep":
        raise ConfigError(f"milestones need train.sched: multistep (it is {t.sched})", key="train.decay_milestones")
    for k in ("mixup", "cutmix", "smoothing"):
        if getattr(t, k):
            raise ConfigError("a classification knob; detection has no use for it (keep 0)", key=f"train.{k}")
    check_optimizer(t.opt)
    check_trackers(t.trackers)
    if t.amp == "fp16" and t.device == "cpu":
        raise ConfigError("fp16 autocast needs a GPU; use bf16 on CPU", key="train.amp")
    _check_init(cfg, data_present)
    # as for a classifier: a cpu run is checked against this machine's memory, any run against the size cap
    check_memory(cfg, memory_gb=None if t.device == "cpu" else float("inf"))


def head_footprint(det: DetectorConfig, stage_dims: tuple[int, ...], height: int, width: int) -> tuple[int, int]:
    """``(parameters, activation bytes per image)`` of the FPN and the heads, under-estimated like the
    backbone's (:mod:`focalexp.models.footprint`): FPN convs and the heads' convs and MLPs; per image,
    ``fpn_channels`` values at every pyramid position x 3 (R-CNNs: the FPN and the RPN from stride 4) or
    x 8 (one-stage: four-conv heads on two branches from stride 8), fitted like the backbone's ``K``."""
    C = det.fpn_channels
    two_stage = det.arch in ("maskrcnn", "fasterrcnn")
    dims = stage_dims if two_stage else stage_dims[1:] or stage_dims
    levels = len(dims) + (1 if two_stage else 2)
    params = sum(d * C for d in dims) + 9 * C * C * len(dims)
    if two_stage:
        params += 9 * C * C + C * 49 * det.representation_size + det.representation_size ** 2
        if det.arch == "maskrcnn":
            params += 9 * C * det.mask_channels + 9 * det.mask_channels ** 2 * (det.mask_layers - 1)
    else:
        params += 72 * C * C
    first = 4 if two_stage else 8
    positions = sum(-(-height // (first * 2 ** i)) * -(-width // (first * 2 ** i)) for i in range(levels))
    return params, 4 * C * positions * (3 if two_stage else 8)


def check_memory(cfg: DetectConfig, processes: int = 1, memory_gb: float | None = None) -> None:
    """Refuse a detection run whose backbone, heads, AdamW state and batch certainly cannot fit this
    machine's memory (``memory_gb``, default: this machine's), or whose backbone is beyond the size cap;
    the images counted are ``max(min_size)`` square (the least a batch of them holds). timm backbones are
    not estimated."""
    n_train = cfg.sizes()[0]
    if cfg.is_timm or (n_train is not None and cfg.train.batch_size > n_train):
        return  # (a batch larger than the training set: the trainer says so)
    from ..models.footprint import activation_bytes, approx_params, check_training_fits, inference_bytes

    ckpt = cfg.train.grad_checkpointing

    def need_with(det: DetectorConfig):
        side = min(max(det.min_size), det.max_size)

        def need(m):
            m = m.replace(num_classes=0)
            hp, ha = head_footprint(det, m.stage_dims, side, side)
            return approx_params(m) + hp, activation_bytes(m.replace(use_checkpoint=True) if ckpt else m, side) + ha
        return need

    det, default = cfg.detector, DetectorConfig()
    alternatives = {f"detector.{k}": need_with(replace(det, **{k: getattr(default, k)}))
                    for k in ("fpn_channels", "representation_size", "mask_channels", "mask_layers", "min_size")
                    if getattr(det, k) != getattr(default, k)}
    check_training_fits(cfg.model, need_with(det), cfg.train.batch_size, processes, memory_gb=memory_gb,
                        alternatives=alternatives, size_key="detector.min_size", eval_batch=cfg.eval.batch_size,
                        eval_per_image=_eval_bytes(cfg) if cfg.eval.batch_size else 0)


def _eval_bytes(cfg: DetectConfig) -> int:
    """What one test image (``min_size[-1]`` square) certainly needs in a detector's forward: the backbone's
    largest block and the FPN's outputs (the heads' own work left out)."""
    from ..models.footprint import inference_bytes

    det = cfg.detector
    side = min(det.min_size[-1], det.max_size)
    m = cfg.backbone_config()
    return inference_bytes(m, side) + head_footprint(det, m.stage_dims, side, side)[1] // (
        3 if det.arch in ("maskrcnn", "fasterrcnn") else 8)


def load_detect_config(path, overrides: Mapping[str, Any] | None = None) -> DetectConfig:
    """Read a detection run config YAML (or none: the recipe's defaults) and resolve it."""
    raw = load_yaml(path, "config") if path is not None else {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{path}': expected a mapping with sections {', '.join(SECTIONS)}", key="config")
    if "grid" in raw or ("base" in raw and "name" in raw):
        raise ConfigError(f"'{path}' looks like a sweep spec, not a run config; run it with `focalexp sweep {path}`",
                          key="config")
    return resolve_detect_config(raw, overrides)
