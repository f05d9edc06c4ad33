"""The data of a detection run: Shapes-det (built in) or a COCO root, as ``(image, target)`` pairs in
torchvision's detection format, with a seeded horizontal flip for training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import ConfigError

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
        train = CocoDetection(root, "train", limit=n_train)
        val_set = CocoDetection(root, "val", limit=n_val)
        if (val_set.classes, val_set.category_of) != (train.classes, train.category_of):
            raise ConfigError("the COCO val split's categories (ids, names) differ from the train split's: labels "
                              "would be scored as other classes", key="data.root")
        val, classes, category_of, val_coco = val_set, train.classes, val_set.category_of, val_set.coco
    train = SeededItems(HFlip(train, d.hflip), cfg.seed)
    return DetData(train, val, len(classes), tuple(classes), val_coco, category_of)


def collate(batch: list) -> tuple:
    """A list of ``(image, target)`` into ``(images, targets)`` (lists: images may differ in size)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
