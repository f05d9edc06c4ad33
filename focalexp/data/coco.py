"""COCO-format detection data from a local root (``$COCO_ROOT`` by default), in the official 2017 layout::

    ROOT/annotations/instances_train2017.json   ROOT/train2017/<file_name>
    ROOT/annotations/instances_val2017.json     ROOT/val2017/<file_name>

Every layout problem is one :class:`~focalexp.errors.ConfigError` line naming the path and what was
expected; no file may lead outside the root (a link or ``..``). The annotation JSON is untrusted: read
with a size limit as strict JSON (no pickle, no code), its structure checked before pycocotools sees it.
Targets are in torchvision's detection format, the same as :class:`~focalexp.data.shapes_det.ShapesDetection`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import ConfigError
from .shapes_det import coco_from_dict, coco_target

COCO_ROOT_ENV = "COCO_ROOT"
SPLITS = ("train", "val")
LAYOUT = "COCO layout: ROOT/annotations/instances_{train,val}2017.json, images in ROOT/{train,val}2017/"
MAX_ANNOTATION_BYTES = 2 << 30  # instances_train2017.json is 448 MB


def coco_root_files(root: str | os.PathLike | None, split: str) -> tuple[Path, Path]:
    """``(annotation json, image folder)`` of ``split`` under ``root`` (None: ``$COCO_ROOT``), checked."""
    from ..fileio import input_file, inside

    if split not in SPLITS:
        raise ConfigError(f"COCO split '{split}' is not one of {', '.join(SPLITS)}")
    text = os.fspath(root) if root is not None else os.environ.get(COCO_ROOT_ENV)
    if not text:
        raise ConfigError(f"no COCO root: give one or set ${COCO_ROOT_ENV} ({LAYOUT})", key="data.root")
    base = Path(os.path.expandvars(os.path.expanduser(text)))
    if not base.is_dir():
        raise ConfigError(f"COCO root '{base}' is not a directory ({LAYOUT})", key="data.root")
    base = base.resolve()  # links in the root itself are fine; what is under it must stay under it
    folder = base / "annotations"
    if not folder.is_dir():
        raise ConfigError(f"no annotations folder '{folder}' ({LAYOUT})", key="data.root")
    ann = folder / f"instances_{split}2017.json"
    if not os.path.lexists(ann):
        raise ConfigError(f"no annotation file '{ann}' ({LAYOUT})", key="data.root")
    images = base / f"{split}2017"
    for path in (ann, images):
        if inside(base, path) is None:
            raise ConfigError(f"'{path}' leads outside '{base}' (a link or '..'); COCO files must lie inside "
                              "the root", key="data.root")
    input_file(ann, "data.root")
    if not images.is_dir():
        raise ConfigError(f"no image folder '{images}' ({LAYOUT})", key="data.root")
    return ann, images


def read_coco_annotations(path: str | os.PathLike, max_bytes: int = MAX_ANNOTATION_BYTES) -> dict:
    """A COCO instances dict from an untrusted file: size-limited strict JSON with lists ``images``,
    ``annotations``, ``categories``, unique ids, and each annotation naming a known image and category
    with a box of four finite numbers; anything else is one line naming the file and the item."""
    from ..fileio import read_json_object

    data = read_json_object(path, "data.root", max_bytes)
    where = f"'{path}'"
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ConfigError(f"{where} has no '{key}' list (not a COCO instances file)", key="data.root")
    ids = {}
    for key in ("images", "categories"):
        seen = set()
        for k, item in enumerate(data[key]):
            if not isinstance(item, dict) or not isinstance(item.get("id"), int) or item["id"] in seen:
                raise ConfigError(f"{where}: {key}[{k}] needs a unique integer 'id'", key="data.root")
            seen.add(item["id"])
        ids[key] = seen
    for k, img in enumerate(data["images"]):
        if not isinstance(img.get("file_name"), str):
            raise ConfigError(f"{where}: images[{k}] has no 'file_name' string", key="data.root")
    for k, a in enumerate(data["annotations"]):
        box = a.get("bbox") if isinstance(a, dict) else None
        if (not isinstance(box, list) or len(box) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise ConfigError(f"{where}: annotations[{k}] needs 'bbox' [x, y, w, h] of four numbers", key="data.root")
        if a.get("image_id") not in ids["images"] or a.get("category_id") not in ids["categories"]:
            raise ConfigError(f"{where}: annotations[{k}] names an unknown image_id {a.get('image_id')!r} or "
                              f"category_id {a.get('category_id')!r}", key="data.root")
        if not isinstance(a.get("id"), int):
            raise ConfigError(f"{where}: annotations[{k}] needs an integer 'id'", key="data.root")
    return data


class CocoDetection(Dataset):
    """One split of a COCO root: ``(image, target)``, the image a float RGB tensor in [0, 1], the target
    in torchvision's detection format with labels 1..K (the sorted category ids mapped to contiguous
    labels; :attr:`category_of` maps back for COCOeval). Boxes without area are dropped; crowd regions
    are kept with ``iscrowd`` 1. ``.coco`` is the split's pycocotools ``COCO``."""

    def __init__(self, root: str | os.PathLike | None, split: str, max_bytes: int = MAX_ANNOTATION_BYTES) -> None:
        ann, self.image_dir = coco_root_files(root, split)
        self.coco = coco_from_dict(read_coco_annotations(ann, max_bytes))
        cats = sorted(self.coco.cats)
        self.label_of = {c: k + 1 for k, c in enumerate(cats)}
        self.category_of = {k + 1: c for k, c in enumerate(cats)}
        self.classes = tuple(self.coco.cats[c].get("name", str(c)) for c in cats)
        self.ids = sorted(self.coco.imgs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        import numpy as np
        import torch
        from PIL import Image

        from ..fileio import inside

        image_id = self.ids[i]
        name = self.coco.imgs[image_id]["file_name"]
        path = inside(self.image_dir, name)
        if path is None:
            raise ConfigError(f"image {image_id}: file_name '{name}' leads outside '{self.image_dir}'", key="data.root")
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"image {image_id}: cannot read '{path}' ({' '.join(str(e).split())[:120]})",
                              key="data.root") from None
        h, w = arr.shape[:2]
        anns = [a for a in self.coco.imgToAnns[image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)
        return image, coco_target(anns, image_id, h, w, self.label_of.__getitem__)
