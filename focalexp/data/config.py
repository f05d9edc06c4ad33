"""The data section of a run config and its checks: what a dataset is, its classes and input size,
whether its files are where the config says. No torch: a sweep validates every run's data section
before it imports anything heavy; :mod:`focalexp.data.build` builds the datasets.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import opt
from ..errors import ConfigError

DATASETS = ("pathfinder", "imagefolder", "cifar10", "cifar100", "fashion_mnist")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# Fashion-MNIST (Xiao et al. 2017, MIT): Debian's dataset-fashion-mnist puts the four IDX files here
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_MEAN = (0.2860,)  # of the 60,000 training images, pixels in [0, 1]
FASHION_MNIST_STD = (0.3530,)
FASHION_MNIST_MAX_ITEMS = 1_000_000  # a file may hold fewer items than the real 60,000/10,000, never more


@dataclass
class DataConfig:
    dataset: str = opt("pathfinder", "pathfinder (built in), imagefolder (root/train, root/val), cifar10, cifar100, "
                       "fashion_mnist (apt-get install dataset-fashion-mnist)",
                       choices=DATASETS)
    root: Optional[str] = opt(None, "data root; $VARS are expanded (imagefolder, cifar; fashion_mnist: default "
                                    f"{FASHION_MNIST_ROOT})")
    img_size: Optional[int] = opt(None, "input size (default: 32 for pathfinder/cifar/fashion_mnist, 224 for "
                                        "imagefolder; fashion_mnist: 28 as stored, 32 padded, others resized)", min=8)
    workers: int = opt(0, "DataLoader worker processes (at most 64: 100,000 forked until the OOM killer)", min=0, max=64)
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


def default_img_size(cfg: DataConfig) -> int:
    return cfg.img_size or (224 if cfg.dataset == "imagefolder" else 32)


def num_classes_of(cfg: DataConfig) -> int:
    """Classes of the dataset, without loading it (imagefolder: counts class folders)."""
    if cfg.dataset == "pathfinder":
        return 2
    if cfg.dataset in ("cifar10", "cifar100", "fashion_mnist"):
        return 100 if cfg.dataset == "cifar100" else 10
    return len(_imagefolder_classes(resolve_root(cfg)))


def input_channels(cfg: DataConfig) -> tuple[int, ...]:
    """The ``model.in_chans`` values the dataset can feed, the dataset's own first: grayscale
    Fashion-MNIST gives 1 channel, or 3 (the gray channel repeated); the others give RGB."""
    return (1, 3) if cfg.dataset == "fashion_mnist" else (3,)


def fashion_mnist_files(cfg: DataConfig) -> dict[str, tuple[Path, Path]]:
    """``{"train": (images, labels), "val": (...)}``: the IDX files under ``data.root`` (default
    :data:`FASHION_MNIST_ROOT`), each ``NAME`` or ``NAME.gz``, inside the root (no link out of it), with
    checked headers (magic, 28 x 28 images, as many labels as images, lengths; see :mod:`.idx`)."""
    from ..fileio import input_file, inside
    from .idx import check_header

    install = (f"install it with `apt-get install {FASHION_MNIST_PACKAGE}` or point data.root at a folder "
               f"holding {', '.join(n + '[.gz]' for pair in FASHION_MNIST_FILES.values() for n in pair)}")
    root = resolve_root(cfg, default=FASHION_MNIST_ROOT, missing=f"no Fashion-MNIST: {{root}} is not a directory; {install}")
    root = root.resolve()  # '..' and links in the root itself are fine; the files must then lie inside it
    out: dict[str, tuple[Path, Path]] = {}
    for split, names in FASHION_MNIST_FILES.items():
        pair = []
        for name in names:
            candidates = [root / name, root / f"{name}.gz"]
            found = [c for c in candidates if os.path.lexists(c)]
            if not found:
                raise ConfigError(f"no Fashion-MNIST at '{root}' ({name}[.gz] is missing); {install}", key="data.root")
            if len(found) > 1:
                raise ConfigError(f"'{root}' holds both {name} and {name}.gz; keep one", key="data.root")
            if inside(root, found[0]) is None:
                raise ConfigError(f"'{found[0]}' leads outside '{root}' (a link or '..'); data files must lie "
                                  "inside the data root", key="data.root")
            pair.append(input_file(found[0], "data.root"))
        images, labels = pair
        n = check_header(images, 3, (None, 28, 28), FASHION_MNIST_MAX_ITEMS).shape[0]
        check_header(labels, 1, (n,), FASHION_MNIST_MAX_ITEMS)
        out[split] = (images, labels)
    return out


def resolve_root(cfg: DataConfig, default: str | None = None, missing: str = "{root} is not a directory") -> Path:
    """``data.root`` ($VARS and ~ expanded; ``default`` when unset) as a directory that exists; ``missing``
    is the message otherwise (``{root}``: the path, quoted)."""
    text = cfg.root or default
    if not text:
        raise ConfigError(f"dataset '{cfg.dataset}' needs a root directory", key="data.root")
    unset = [m for m in re.findall(r"\$\{?(\w+)\}?", text) if m not in os.environ]
    if unset:
        raise ConfigError(f"environment variable ${unset[0]} is not set (in '{text}')", key="data.root")
    root = Path(os.path.expandvars(os.path.expanduser(text)))
    if not root.is_dir():
        raise ConfigError(missing.format(root=f"'{root}'"), key="data.root")
    return root


def _imagefolder_classes(root: Path) -> list[str]:
    tr, va = root / "train", root / "val"
    if not tr.is_dir() or not va.is_dir():
        raise ConfigError(
            f"expected '{tr}' and '{va}' with one folder per class (ImageNet layout)", key="data.root"
        )
    classes = sorted(d.name for d in tr.iterdir() if d.is_dir())
    val_classes = sorted(d.name for d in va.iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(f"'{tr}' has no class folders (ImageNet layout: train/<class>/<image>)", key="data.root")
    if classes != val_classes:
        extra = sorted(set(classes) ^ set(val_classes))[:3]
        raise ConfigError(f"train/ and val/ have different class folders (e.g. {', '.join(extra)})", key="data.root")
    if len(classes) < 2:
        raise ConfigError(f"'{tr}' has one class folder ('{classes[0]}'); classification needs at "
                          "least two (ImageNet layout: train/<class>/<image>)", key="data.root")
    for split in (tr, va):
        for c in classes:
            if not _has_image(split / c):
                raise ConfigError(f"'{split / c}' has no images (files ending in "
                                  f"{', '.join(IMAGE_SUFFIXES[:4])}, ...); every class folder needs one", key="data.root")
    return classes


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def _has_image(folder: Path) -> bool:
    """One image file anywhere under ``folder`` (ImageFolder looks recursively), found without listing all."""
    for dirpath, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            return True
    return False


PATHFINDER_SIZES = (20000, 2000)  # generated training and validation images when not set


# training images of the datasets on disk of known size (imagefolder: whatever its root holds)
KNOWN_TRAIN_SIZES = {"fashion_mnist": 60000, "cifar10": 50000, "cifar100": 50000}


def train_size_at_most(cfg: DataConfig) -> int | None:
    """The most training images a run of ``cfg`` sees (Pathfinder: as many as it generates; on disk,
    ``train_size`` caps the set), or None where unknown."""
    if cfg.dataset == "pathfinder":
        return cfg.train_size or PATHFINDER_SIZES[0]
    known = KNOWN_TRAIN_SIZES.get(cfg.dataset)
    if cfg.train_size is None:
        return known
    return cfg.train_size if known is None else min(cfg.train_size, known)


def check_data(cfg: DataConfig, on_disk: bool = True) -> None:
    """Validate the data section (values; with ``on_disk`` also paths and layouts) without loading images."""
    if cfg.dataset == "pathfinder":
        from ..fileio import check_generated_fits

        s = default_img_size(cfg)  # measured peak while generating: the uint8 bank twice (6.2 KB per 32 px image)
        check_generated_fits(cfg.train_size or PATHFINDER_SIZES[0], cfg.val_size or PATHFINDER_SIZES[1],
                             2 * 3 * s * s, f"{s}x{s} Pathfinder images")
    if not on_disk:
        pass
    elif cfg.dataset == "imagefolder":
        _imagefolder_classes(resolve_root(cfg))
    elif cfg.dataset == "fashion_mnist":
        fashion_mnist_files(cfg)
    elif cfg.dataset in ("cifar10", "cifar100"):
        root = resolve_root(cfg)
        folder = "cifar-10-batches-py" if cfg.dataset == "cifar10" else "cifar-100-python"
        if not (root / folder).is_dir():
            raise ConfigError(f"no {cfg.dataset} at '{root}' (expected '{root / folder}'; "
                              "download the python version of the dataset there)", key="data.root")
    if len(cfg.scale) != 2 or not 0 < cfg.scale[0] <= cfg.scale[1] <= 1:
        raise ConfigError(f"expected [min, max] with 0 < min <= max <= 1, got {cfg.scale}", key="data.scale")
