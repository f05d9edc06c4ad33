"""Datasets for a run: the built-in Pathfinder-lite, ImageFolder (ImageNet layout), CIFAR-10/100.

Transforms come from timm (``create_transform``, RandAugment, RandomErasing) and torchvision. Every
random augmentation of item ``i`` in epoch ``e`` is seeded by ``(seed, e, i)``: a run gives the same
batches whatever the number of loader workers, the sharding over ranks, or a resume in mid-epoch.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..configtools import opt
from ..errors import ConfigError

DATASETS = ("pathfinder", "imagefolder", "cifar10", "cifar100")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class DataConfig:
    dataset: str = opt("pathfinder", "pathfinder (built in), imagefolder (root/train, root/val), cifar10, cifar100",
                       choices=DATASETS)
    root: Optional[str] = opt(None, "data root; $VARS are expanded (imagefolder, cifar)")
    img_size: Optional[int] = opt(None, "input size (default: 32 for pathfinder/cifar, 224 for imagefolder)", min=8)
    workers: int = opt(0, "DataLoader worker processes", min=0)
    train_size: Optional[int] = opt(None, "training images (pathfinder: generated, default 20000; others: a cap)", min=1)
    val_size: Optional[int] = opt(None, "validation images (pathfinder default 2000; others: a cap)", min=1)
    path_length: int = opt(12, "pathfinder: pixels per path (the spatial range the task needs)", min=2)
    distractors: int = opt(1, "pathfinder: extra paths", min=0)
    gap: int = opt(4, "pathfinder: pixels removed to cut a path", min=1)
    augment: bool = opt(True, "training augmentation on (pathfinder: the 8 symmetries; images: crop/flip/...)")
    auto_augment: Optional[str] = opt(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1")
    color_jitter: float = opt(0.0, "colour jitter strength", min=0.0)
    reprob: float = opt(0.0, "random erasing probability", min=0.0, max=1.0)
    remode: str = opt("pixel", "random erasing mode", choices=("pixel", "rand", "const"))
    hflip: float = opt(0.5, "horizontal flip probability", min=0.0, max=1.0)
    scale: list[float] = opt([0.08, 1.0], "random-resized-crop scale range (imagefolder)")
    interpolation: str = opt("bicubic", "resize interpolation", choices=("bicubic", "bilinear", "nearest"))
    crop_pct: float = opt(0.875, "evaluation centre-crop fraction (imagefolder)", min=0.1, max=1.0)


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    img_size: int
    classes: tuple[str, ...]


def default_img_size(cfg: DataConfig) -> int:
    return cfg.img_size or (224 if cfg.dataset == "imagefolder" else 32)


def num_classes_of(cfg: DataConfig) -> int:
    """Classes of the dataset, without loading it (imagefolder: counts class folders)."""
    if cfg.dataset == "pathfinder":
        return 2
    if cfg.dataset in ("cifar10", "cifar100"):
        return 10 if cfg.dataset == "cifar10" else 100
    return len(_imagefolder_classes(resolve_root(cfg)))


def resolve_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise ConfigError(f"data.root: dataset '{cfg.dataset}' needs a root directory")
    missing = [m for m in re.findall(r"\$\{?(\w+)\}?", cfg.root) if m not in os.environ]
    if missing:
        raise ConfigError(f"data.root: environment variable ${missing[0]} is not set (in '{cfg.root}')")
    root = Path(os.path.expandvars(os.path.expanduser(cfg.root)))
    if not root.is_dir():
        raise ConfigError(f"data.root: '{root}' is not a directory")
    return root


def _imagefolder_classes(root: Path) -> list[str]:
    tr, va = root / "train", root / "val"
    if not tr.is_dir() or not va.is_dir():
        raise ConfigError(
            f"data.root: expected '{tr}' and '{va}' with one folder per class (ImageNet layout)"
        )
    classes = sorted(d.name for d in tr.iterdir() if d.is_dir())
    val_classes = sorted(d.name for d in va.iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(f"data.root: '{tr}' has no class folders (ImageNet layout: train/<class>/<image>)")
    if classes != val_classes:
        extra = sorted(set(classes) ^ set(val_classes))[:3]
        raise ConfigError(f"data.root: train/ and val/ have different class folders (e.g. {', '.join(extra)})")
    if len(classes) < 2:
        raise ConfigError(f"data.root: '{tr}' has one class folder ('{classes[0]}'); classification needs at "
                          "least two (ImageNet layout: train/<class>/<image>)")
    for split in (tr, va):
        for c in classes:
            if not _has_image(split / c):
                raise ConfigError(f"data.root: '{split / c}' has no images (files ending in "
                                  f"{', '.join(IMAGE_SUFFIXES[:4])}, ...); every class folder needs one")
    return classes


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def _has_image(folder: Path) -> bool:
    """One image file anywhere under ``folder`` (ImageFolder looks recursively), found without listing all."""
    for dirpath, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            return True
    return False


def check_data(cfg: DataConfig, on_disk: bool = True) -> None:
    """Validate the data section (values; with ``on_disk`` also paths and layouts) without loading images."""
    if not on_disk:
        pass
    elif cfg.dataset == "imagefolder":
        _imagefolder_classes(resolve_root(cfg))
    elif cfg.dataset in ("cifar10", "cifar100"):
        root = resolve_root(cfg)
        folder = "cifar-10-batches-py" if cfg.dataset == "cifar10" else "cifar-100-python"
        if not (root / folder).is_dir():
            raise ConfigError(f"data.root: no {cfg.dataset} at '{root}' (expected '{root / folder}'; "
                              "download the python version of the dataset there)")
    if len(cfg.scale) != 2 or not 0 < cfg.scale[0] <= cfg.scale[1] <= 1:
        raise ConfigError(f"data.scale: expected [min, max] with 0 < min <= max <= 1, got {cfg.scale}")


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed Python, NumPy and torch for one item, restoring the caller's RNG streams afterwards."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class SeededItems(Dataset):
    """Wraps a dataset whose transforms draw from the global RNGs: item ``i`` of epoch ``e`` gets
    its own seed, derived from ``(seed, e, i)``."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        with _seeded(hash((self.seed, self.epoch, int(i))) & 0x7FFFFFFF):
            return self.dataset[i]


def _cap(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):  # type: ignore[arg-type]
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]  # type: ignore[arg-type]
    return Subset(ds, sorted(idx.tolist()))


def _image_transforms(cfg: DataConfig, size: int, mean, std, cifar: bool):
    from timm.data import create_transform
    from torchvision import transforms as T

    if cifar:
        train_t = [T.RandomCrop(size, padding=size // 8)] if cfg.augment else []
        if cfg.augment and cfg.hflip:
            train_t.append(T.RandomHorizontalFlip(cfg.hflip))
        if cfg.augment and cfg.auto_augment:
            from timm.data.auto_augment import rand_augment_transform

            train_t.append(rand_augment_transform(cfg.auto_augment, {"translate_const": size // 3,
                                                                     "img_mean": tuple(int(255 * m) for m in mean)}))
        if cfg.augment and cfg.color_jitter:
            train_t.append(T.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
        train_t += [T.ToTensor(), T.Normalize(mean, std)]
        if cfg.augment and cfg.reprob:
            from timm.data.random_erasing import RandomErasing

            train_t.append(RandomErasing(cfg.reprob, mode=cfg.remode, device="cpu"))
        return T.Compose(train_t), T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(mean, std)])
    train = create_transform(
        size, is_training=cfg.augment, scale=tuple(cfg.scale), hflip=cfg.hflip, color_jitter=cfg.color_jitter or None,
        auto_augment=cfg.auto_augment, interpolation=cfg.interpolation, mean=mean, std=std, re_prob=cfg.reprob,
        re_mode=cfg.remode,
    )
    val = create_transform(size, is_training=False, interpolation=cfg.interpolation, mean=mean, std=std,
                           crop_pct=cfg.crop_pct)
    return train, val


class CifarBatches(Dataset):
    """CIFAR-10/100 from the "python version" folder, read like torchvision's ``CIFAR10`` / ``CIFAR100``
    (same arrays, same order, PIL images into ``transform``) but through :mod:`focalexp.unpickle`'s
    numpy allowlist: torchvision unpickles the batches with plain ``pickle``, which would run whatever a
    downloaded file asks for."""

    FILES = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                    "batches.meta", "label_names", "labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
    }

    def __init__(self, root: Path, dataset: str, train: bool, transform=None) -> None:
        folder, train_files, test_files, meta, names_key, labels_key = self.FILES[dataset]
        base = Path(root) / folder
        data, targets = [], []
        for name in train_files if train else test_files:
            entry = self._read(base / name)
            labels = entry.get("labels", entry.get(labels_key))
            if not isinstance(entry.get("data"), np.ndarray) or labels is None:
                raise ConfigError(f"data.root: '{base / name}' is not a {dataset} batch (no data/labels)")
            data.append(entry["data"])
            targets.extend(int(t) for t in labels)
        try:
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except ValueError as e:
            raise ConfigError(f"data.root: '{base}' holds batches of the wrong shape ({e})") from None
        if len(self.data) != len(targets):
            raise ConfigError(f"data.root: '{base}' has {len(self.data)} images but {len(targets)} labels")
        names = self._read(base / meta).get(names_key)
        if not isinstance(names, list):
            raise ConfigError(f"data.root: '{base / meta}' has no {names_key}")
        self.classes = [str(n) for n in names]
        self.targets = targets
        self.transform = transform

    @staticmethod
    def _read(path: Path) -> dict:
        from .. import unpickle
        from ..fileio import input_file

        p = input_file(path, "data.root")
        try:
            with open(p, "rb") as f:
                obj = unpickle.load(f, unpickle.NUMPY, encoding="latin1")
        except unpickle.RefusedGlobal as e:
            raise ConfigError(f"data.root: refused '{p}': it asks to call or build '{e.qualname}', which a CIFAR "
                              "batch never holds; nothing from the file was run") from None
        except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways
            raise ConfigError(f"data.root: '{p}' is corrupt or not a CIFAR batch ({type(e).__name__})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"data.root: '{p}' is not a CIFAR batch (a {type(obj).__name__}, not a dict)")
        return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


def build_data(cfg: DataConfig, seed: int) -> DataBundle:
    """The training and validation datasets of a run."""
    check_data(cfg)
    size = default_img_size(cfg)
    if cfg.dataset == "pathfinder":
        kw = dict(size=size, path_length=cfg.path_length, distractors=cfg.distractors, gap=cfg.gap)
        from .pathfinder import PathfinderDataset

        # the data seed is fixed (not the run seed): seeds of a sweep see the same images
        train = PathfinderDataset(cfg.train_size or 20000, seed=1, augment=cfg.augment, **kw)
        val = PathfinderDataset(cfg.val_size or 2000, seed=2, **kw)
        return DataBundle(train, val, 2, size, PathfinderDataset.classes)

    from torchvision import datasets

    root = resolve_root(cfg)
    if cfg.dataset in ("cifar10", "cifar100"):
        t_train, t_val = _image_transforms(cfg, size, CIFAR_MEAN, CIFAR_STD, cifar=True)
        train = CifarBatches(root, cfg.dataset, train=True, transform=t_train)
        val = CifarBatches(root, cfg.dataset, train=False, transform=t_val)
        classes = tuple(train.classes)
    else:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        t_train, t_val = _image_transforms(cfg, size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, cifar=False)
        train = datasets.ImageFolder(str(root / "train"), transform=t_train)
        val = datasets.ImageFolder(str(root / "val"), transform=t_val)
        classes = tuple(train.classes)
    train = SeededItems(_cap(train, cfg.train_size, seed), seed)
    val = SeededItems(_cap(val, cfg.val_size, seed + 1), seed)
    return DataBundle(train, val, len(classes), size, classes)
