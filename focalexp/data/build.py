"""Datasets for a run: the built-in Pathfinder-lite, ImageFolder (ImageNet layout), CIFAR-10/100, Fashion-MNIST.

Transforms come from timm (``create_transform``, RandAugment, RandomErasing) and torchvision. Every
random augmentation of item ``i`` in epoch ``e`` is seeded by ``(seed, e, i)``: a run gives the same
batches whatever the number of loader workers, the sharding over ranks, or a resume in mid-epoch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError
from ..fileio import inside, read_image
from .config import (CIFAR_MEAN, CIFAR_STD, DATASETS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, IMAGE_SUFFIXES,
                     PATHFINDER_SIZES,
                     DataConfig, check_data, default_img_size, fashion_mnist_files, input_channels, num_classes_of,
                     resolve_root)

# the data section's names, also importable from here (their home is focalexp.data.config)
__all__ = ["DATASETS", "IMAGE_SUFFIXES", "DataBundle", "DataConfig", "CifarBatches", "build_data", "check_data",
           "default_img_size", "num_classes_of", "resolve_root"]

@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    img_size: int
    classes: tuple[str, ...]


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


class RepeatChannels:
    """``(1, H, W)`` -> ``(n, H, W)``: a grayscale image for a model with ``in_chans`` n."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(self.n, 1, 1)


def _small_image_transforms(cfg: DataConfig, size: int, mean, std, fit=(), crop_padding: int = 0, channels: int = 0):
    """CIFAR-style transforms: ``fit`` (to ``size``), then for training a random crop with ``crop_padding``
    (translation), flip, RandAugment, jitter; tensor, normalisation, random erasing; ``channels``: repeat
    a grayscale image to that many channels (0: keep)."""
    from torchvision import transforms as T

    gray = len(mean) == 1
    train_t = list(fit)
    if cfg.augment and crop_padding:
        train_t.append(T.RandomCrop(size, padding=crop_padding))
    if cfg.augment and cfg.hflip:
        train_t.append(T.RandomHorizontalFlip(cfg.hflip))
    if cfg.augment and cfg.auto_augment:
        from timm.data.auto_augment import rand_augment_transform

        fill = tuple(int(255 * m) for m in mean)
        train_t.append(rand_augment_transform(cfg.auto_augment, {"translate_const": size // 3,
                                                                 "img_mean": fill[0] if gray else fill}))
    if cfg.augment and cfg.color_jitter:  # a gray image has no saturation
        train_t.append(T.ColorJitter(cfg.color_jitter, cfg.color_jitter, 0.0 if gray else cfg.color_jitter))
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    train_t += tail
    if cfg.augment and cfg.reprob:
        from timm.data.random_erasing import RandomErasing

        train_t.append(RandomErasing(cfg.reprob, mode=cfg.remode, device="cpu"))
    val_t = [*fit, *tail] if fit else [T.Resize(size), *tail]
    if channels:
        train_t.append(RepeatChannels(channels))
        val_t.append(RepeatChannels(channels))
    return T.Compose(train_t), T.Compose(val_t)


def _fashion_mnist_transforms(cfg: DataConfig, size: int, in_chans: int):
    """28 px as stored, 32 px zero-padded by 2 (the LeNet convention, the default), any other size resized;
    training: shifts of up to size/16 px (2 at 32) and horizontal flips (clothes, bags and shoes stay
    what they are mirrored; ``data.hflip: 0`` turns them off)."""
    from torchvision import transforms as T

    if size == 28:
        fit = []
    elif size == 32:
        fit = [T.Pad(2)]
    else:
        fit = [T.Resize((size, size), interpolation=T.InterpolationMode(cfg.interpolation))]
    return _small_image_transforms(cfg, size, FASHION_MNIST_MEAN, FASHION_MNIST_STD, fit=fit,
                                   crop_padding=max(1, size // 16), channels=in_chans if in_chans != 1 else 0)


def _image_transforms(cfg: DataConfig, size: int, mean, std):
    """ImageNet-style transforms from timm (random-resized crop for training, resize + centre crop)."""
    from timm.data import create_transform

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
        n_classes = 100 if dataset == "cifar100" else 10
        base = Path(root) / folder
        names = self._read(base / meta).get(names_key)
        if not isinstance(names, list) or len(names) != n_classes or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"data.root: '{base / meta}' has no {names_key} ({n_classes} strings)")
        data, targets = [], []
        for name in train_files if train else test_files:
            entry = self._read(base / name)
            x, labels = entry.get("data"), entry.get("labels", entry.get(labels_key))
            where = f"data.root: '{base / name}'"
            if not isinstance(x, np.ndarray) or labels is None:
                raise ConfigError(f"{where} is not a {dataset} batch (no data/labels)")
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
                raise ConfigError(f"{where} holds {x.dtype} data of shape {x.shape}; a {dataset} batch holds uint8 "
                                  "rows of 3072 pixels")
            y = np.asarray(labels) if isinstance(labels, (list, tuple, np.ndarray)) else None
            if y is None or y.ndim != 1 or (len(y) and y.dtype.kind not in "iu"):
                raise ConfigError(f"{where} holds labels that are not a list of integers")
            if len(y) and (y.min() < 0 or y.max() >= n_classes):
                k = int(np.flatnonzero((y < 0) | (y >= n_classes))[0])
                raise ConfigError(f"{where} holds label {int(y[k])} at item {k}; {dataset}'s labels are "
                                  f"0-{n_classes - 1}")
            if len(y) != len(x):
                raise ConfigError(f"{where} has {len(x)} images but {len(y)} labels")
            data.append(x)
            targets.extend(int(t) for t in y)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.classes = list(names)
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


def refuse_links_out(root: Path) -> None:
    """One line if a link under ``root`` leads outside it, or back into a folder that contains it (a cycle).

    ImageFolder follows links, so an image root could otherwise feed a run any file on the machine;
    every image is also read through :func:`~focalexp.fileio.read_image` with the root as its base. Files
    are known from the directory listing (no stat per file); only folders are resolved."""
    base = root.resolve()

    def walk(folder: Path, chain: frozenset) -> None:
        with os.scandir(folder) as entries:
            for e in entries:
                if e.is_symlink() and inside(base, e.path) is None:
                    raise ConfigError(f"'{e.path}' links to '{os.path.realpath(e.path)}', outside '{root}'; every "
                                      "image must lie inside the data root", key="data.root")
                if e.is_dir():
                    real = Path(e.path).resolve()
                    if real in chain:
                        raise ConfigError(f"'{e.path}' is a link back to '{real}', a folder that holds it (a "
                                          "cycle)", key="data.root")
                    walk(Path(e.path), chain | {real})

    walk(root, frozenset({base}))


def build_data(cfg: DataConfig, seed: int, in_chans: int = 3) -> DataBundle:
    """The training and validation datasets of a run; ``in_chans``: the model's input channels (1 or 3 for
    grayscale datasets, whose images are then repeated; :func:`~focalexp.data.config.input_channels`)."""
    check_data(cfg)
    if in_chans not in input_channels(cfg):
        raise ConfigError(f"{cfg.dataset} feeds {' or '.join(map(str, input_channels(cfg)))} channels, "
                          f"not {in_chans}", key="model.in_chans")
    size = default_img_size(cfg)
    if cfg.dataset == "pathfinder":
        kw = dict(size=size, path_length=cfg.path_length, distractors=cfg.distractors, gap=cfg.gap)
        from .pathfinder import PathfinderDataset

        # the data seed is fixed (not the run seed): seeds of a sweep see the same images
        train = PathfinderDataset(cfg.train_size or PATHFINDER_SIZES[0], seed=1, augment=cfg.augment, **kw)
        val = PathfinderDataset(cfg.val_size or PATHFINDER_SIZES[1], seed=2, **kw)
        return DataBundle(train, val, 2, size, PathfinderDataset.classes)

    if cfg.dataset == "fashion_mnist":
        from .fashion_mnist import FashionMNIST

        files = fashion_mnist_files(cfg)
        t_train, t_val = _fashion_mnist_transforms(cfg, size, in_chans)
        train = FashionMNIST(*files["train"], transform=t_train)
        val = FashionMNIST(*files["val"], transform=t_val)
        classes = tuple(train.classes)
    elif cfg.dataset in ("cifar10", "cifar100"):
        root = resolve_root(cfg)
        t_train, t_val = _small_image_transforms(cfg, size, CIFAR_MEAN, CIFAR_STD, crop_padding=size // 8)
        train = CifarBatches(root, cfg.dataset, train=True, transform=t_train)
        val = CifarBatches(root, cfg.dataset, train=False, transform=t_val)
        classes = tuple(train.classes)
    else:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        from torchvision import datasets

        root = resolve_root(cfg)
        refuse_links_out(root)
        loader = functools.partial(read_image, what="data.root", base=root.resolve())
        t_train, t_val = _image_transforms(cfg, size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        train = datasets.ImageFolder(str(root / "train"), transform=t_train, loader=loader)
        val = datasets.ImageFolder(str(root / "val"), transform=t_val, loader=loader)
        classes = tuple(train.classes)
    train = SeededItems(_cap(train, cfg.train_size, seed), seed)
    val = SeededItems(_cap(val, cfg.val_size, seed + 1), seed)
    return DataBundle(train, val, len(classes), size, classes)
