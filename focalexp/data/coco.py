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


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(1 << 63) <= v < (1 << 63)


def _numbers(v, n: int | None = None) -> bool:
    return (isinstance(v, list) and (n is None or len(v) == n)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))


def _safe_name(name) -> bool:
    """A file name relative to its folder that cannot leave it by its spelling (links are checked on disk)."""
    from pathlib import PurePosixPath

    if not isinstance(name, str) or "\0" in name:
        return False
    path = PurePosixPath(name)
    return bool(path.parts) and not path.is_absolute() and ".." not in path.parts


def rle_string_counts(s: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' format: 5-bit groups with a
    continuation bit, offset by 48, counts after the second stored as differences), or None when the
    string is not one. Checked here because pycocotools decodes it in C without bounds checks."""
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None  # ends inside a count
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if k > 7:
                return None  # more than 35 bits: not a count of a mask's pixels
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_segmentation(seg, w: int, h: int, slack_w: float, slack_h: float) -> str | None:
    """Why ``seg`` (an annotation's ``segmentation``) is not a COCO mask of a ``w x h`` image, or None."""
    if isinstance(seg, list):  # polygons
        for poly in seg:
            if not _numbers(poly) or len(poly) < 6 or len(poly) % 2:
                return "polygons must be lists of at least 3 (x, y) number pairs"
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -slack_w or max(xs) > w + slack_w or min(ys) < -slack_h or max(ys) > h + slack_h:
                return f"a polygon leaves the {w}x{h} image"
        return None
    if isinstance(seg, dict):  # RLE
        size = seg.get("size")
        if not (isinstance(size, list) and len(size) == 2 and all(_int(v) for v in size)) or size != [h, w]:
            return f"RLE 'size' {size!r} is not the image's [height, width] [{h}, {w}]"
        counts = seg.get("counts")
        if isinstance(counts, str):
            counts = rle_string_counts(counts)
            if counts is None:
                return "RLE 'counts' is not a compressed COCO RLE string"
        elif not (isinstance(counts, list) and all(_int(c) for c in counts)):
            return "RLE 'counts' must be a string or a list of integers"
        if any(c < 0 for c in counts) or sum(counts) != h * w:
            return f"RLE counts must be non-negative and cover the {h * w} pixels exactly"
        return None
    return "must be a list of polygons or an RLE object"


# how far a box or polygon may reach past its image: converters round, COCO itself stays inside
SLACK_PX, SLACK_FRACTION = 1.0, 0.02


def read_coco_annotations(path: str | os.PathLike, max_bytes: int = MAX_ANNOTATION_BYTES) -> dict:
    """A COCO instances dict from an untrusted file, checked before pycocotools (C code without bounds
    checks) or torch sees it: size-limited strict JSON; ``images``, ``annotations``, ``categories``
    lists of objects with unique integer ids; images with a relative ``file_name`` that cannot leave
    the image folder and integer ``width``/``height`` (at most :data:`~focalexp.fileio.MAX_PIXELS`
    pixels); categories with a ``name``; annotations naming a known image and category, with a box of
    four finite numbers inside its image (a pixel or 2 % of the side of slack), a finite ``area``,
    ``iscrowd`` 0 or 1, and polygons or an RLE that fit the image. Anything else is one line naming the
    file, the item and the key."""
    from ..fileio import MAX_PIXELS, read_json_object

    data = read_json_object(path, "data.root", max_bytes)
    where = f"'{path}'"

    def bad(item: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: {item} {why}", key="data.root")

    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ConfigError(f"{where} has no '{key}' list (not a COCO instances file)", key="data.root")
    ids: dict[str, dict] = {}
    for key in ("images", "categories", "annotations"):
        seen: dict = {}
        for k, item in enumerate(data[key]):
            if not isinstance(item, dict):
                raise bad(f"{key}[{k}]", f"is a JSON {type(item).__name__}, not an object")
            if not _int(item.get("id")) or item["id"] in seen:
                raise bad(f"{key}[{k}]", "needs a unique integer 'id'")
            seen[item["id"]] = item
        ids[key] = seen
    for k, img in enumerate(data["images"]):
        if not _safe_name(img.get("file_name")):
            raise bad(f"images[{k}]", f"'file_name' {img.get('file_name')!r} is not a file name inside the image "
                      "folder (a relative path without '..')")
        w, h = img.get("width"), img.get("height")
        if not (_int(w) and _int(h) and w > 0 and h > 0 and w * h <= MAX_PIXELS):
            raise bad(f"images[{k}]", f"needs integer 'width' and 'height' (at most {MAX_PIXELS:,} pixels), got "
                      f"{w!r} x {h!r}")
    for k, cat in enumerate(data["categories"]):
        if not isinstance(cat.get("name"), str):
            raise bad(f"categories[{k}]", "needs a 'name' string")
    for k, a in enumerate(data["annotations"]):
        item = f"annotations[{k}]"
        img = ids["images"].get(a.get("image_id")) if _int(a.get("image_id")) else None
        if img is None or not _int(a.get("category_id")) or a["category_id"] not in ids["categories"]:
            raise bad(item, f"names an unknown image_id {a.get('image_id')!r} or category_id {a.get('category_id')!r}")
        w, h = img["width"], img["height"]
        sw, sh = SLACK_PX + SLACK_FRACTION * w, SLACK_PX + SLACK_FRACTION * h
        box = a.get("bbox")
        if not _numbers(box, 4):
            raise bad(item, "needs 'bbox' [x, y, w, h] of four numbers")
        x, y, bw, bh = box
        if bw < 0 or bh < 0 or x < -sw or y < -sh or x + bw > w + sw or y + bh > h + sh:
            raise bad(item, f"'bbox' {box} is not a box inside its {w}x{h} image (image {a['image_id']})")
        area = a.get("area")
        if not _numbers([area]) or area < 0:
            raise bad(item, f"needs a finite, non-negative 'area', got {area!r}")
        if a.get("iscrowd", 0) not in (0, 1):
            raise bad(item, f"'iscrowd' must be 0 or 1, got {a.get('iscrowd')!r}")
        if "segmentation" in a and (why := _check_segmentation(a["segmentation"], w, h, sw, sh)):
            raise bad(item, f"'segmentation': {why} (image {a['image_id']})")
    return data


class CocoDetection(Dataset):
    """One split of a COCO root: ``(image, target)``, the image a float RGB tensor in [0, 1], the target
    in torchvision's detection format with labels 1..K (the sorted category ids mapped to contiguous
    labels; :attr:`category_of` maps back for COCOeval). Boxes without area are dropped; crowd regions
    are kept with ``iscrowd`` 1. ``limit`` keeps the first images (by id); ``.coco`` is the kept images'
    ground truth as a pycocotools ``COCO``.

    Every kept image file is checked when the split is opened, from its header (nothing decoded): inside
    the image folder (no link out), an image of at most :data:`~focalexp.fileio.MAX_PIXELS` pixels, of the
    size its annotation declares. Damage only decoding finds (a truncated body) is one line when read."""

    def __init__(self, root: str | os.PathLike | None, split: str, max_bytes: int = MAX_ANNOTATION_BYTES,
                 limit: int | None = None) -> None:
        ann, self.image_dir = coco_root_files(root, split)
        data = read_coco_annotations(ann, max_bytes)
        self.ids = sorted(im["id"] for im in data["images"])[:limit]
        if limit is not None and limit < len(data["images"]):
            keep = set(self.ids)
            data = {**data, "images": [im for im in data["images"] if im["id"] in keep],
                    "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
        self.coco = coco_from_dict(data)
        cats = sorted(self.coco.cats)
        self.label_of = {c: k + 1 for k, c in enumerate(cats)}
        self.category_of = {k + 1: c for k, c in enumerate(cats)}
        self.classes = tuple(self.coco.cats[c]["name"] for c in cats)
        for image_id in self.ids:
            self._image(image_id, decode=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.ids)

    def _image(self, image_id: int, decode: bool = True):
        """The checked image file of ``image_id`` (see the class), decoded to an RGB array if ``decode``."""
        import numpy as np

        from ..fileio import open_image

        info = self.coco.imgs[image_id]
        what = f"data.root: image {image_id}"
        with open_image(self.image_dir / info["file_name"], what, base=self.image_dir) as im:
            if im.size != (info["width"], info["height"]):
                raise ConfigError(f"{what}: '{self.image_dir / info['file_name']}' is {im.size[0]}x{im.size[1]}; "
                                  f"its annotation says {info['width']}x{info['height']}")
            return np.asarray(im.convert("RGB")) if decode else None

    def __getitem__(self, i: int):
        import torch

        image_id = self.ids[i]
        arr = self._image(image_id)
        h, w = arr.shape[:2]
        anns = [a for a in self.coco.imgToAnns[image_id] if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        image = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255)
        return image, coco_target(anns, image_id, h, w, self.label_of.__getitem__)
