"""The data of a detection run: Shapes-det (built in) or a COCO root, as ``(image, target)`` pairs in
torchvision's detection format, with a seeded horizontal flip for training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from .config import DetectConfig

# the data seeds are fixed (not the run seed): every seed of a sweep sees the same images
SHAPES_TRAIN_SEED, SHAPES_VAL_SEED = 11, 12


@dataclass
class DetData:
    train: Dataset
    val: Dataset
    num_classes: int
    classes: tuple[str, ...]
    val_coco: Any  # pycocotools COCO of the evaluated images
    category_of: dict[int, int] | None  # label -> COCO category id (None: the same)


class HFlip(Dataset):
    """Training items flipped left-right with probability ``p`` (image, boxes, masks), drawing from
    torch's RNG: wrapped in :class:`~focalexp.data.build.SeededItems`, each item of each epoch has its
    own seed, so a resumed run flips exactly what the uninterrupted one would."""

    def __init__(self, dataset: Dataset, p: float) -> None:
        self.dataset, self.p = dataset, p

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        image, target = self.dataset[i]
        if self.p > 0 and torch.rand(()) < self.p:
            w = image.shape[-1]
            image = image.flip(-1)
            target = dict(target)
            b = target["boxes"].clone()
            b[:, 0], b[:, 2] = w - target["boxes"][:, 2], w - target["boxes"][:, 0]
            target["boxes"] = b
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return image, target


def _cap(ds: Dataset, n: int | None) -> Dataset:
    return ds if n is None or n >= len(ds) else Subset(ds, range(n))  # type: ignore[arg-type]


def build_det_data(cfg: DetectConfig) -> DetData:
    """The training and validation sets of ``cfg`` (shapes generated here; coco read from its root)."""
    from ..data.build import SeededItems

    d = cfg.data
    n_train, n_val = cfg.sizes()
    if d.dataset == "shapes":
        from ..data.shapes_det import ShapesDetection

        kw = dict(size=d.img_size, max_objects=d.max_objects, frame_rate=d.frame_rate)
        train_set = ShapesDetection(n_train, SHAPES_TRAIN_SEED, **kw)
        val = ShapesDetection(n_val, SHAPES_VAL_SEED, **kw)
        val_coco, category_of, classes = val.coco, None, ShapesDetection.classes
        train: Dataset = train_set
    else:
        import os

        from ..data.coco import CocoDetection

        root = os.path.expandvars(d.root) if d.root else None
        train_full = CocoDetection(root, "train")
        val_full = CocoDetection(root, "val")
        train = _cap(train_full, n_train)
        val = _cap(val_full, n_val)
        classes, category_of = train_full.classes, val_full.category_of
        val_coco = val_full.coco if n_val is None or n_val >= len(val_full) else _sub_coco(val_full, n_val)
    train = SeededItems(HFlip(train, d.hflip), cfg.seed)
    return DetData(train, val, len(classes), tuple(classes), val_coco, category_of)


def _sub_coco(ds, n: int):
    """The ground truth of the first ``n`` images of a :class:`CocoDetection` (a capped validation set)."""
    from ..data.shapes_det import coco_from_dict

    keep = set(ds.ids[:n])
    full = ds.coco.dataset
    return coco_from_dict({**full, "images": [im for im in full["images"] if im["id"] in keep],
                           "annotations": [a for a in full["annotations"] if a["image_id"] in keep]})


def collate(batch: list) -> tuple:
    """A list of ``(image, target)`` into ``(images, targets)`` (lists: images may differ in size)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
