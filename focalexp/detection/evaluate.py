"""COCO evaluation of a detector's outputs with pycocotools' ``COCOeval`` (boxes, and masks for Mask R-CNN).

Numbers are reported in percent, as the papers do: ``box_ap`` (AP at IoU .50:.95), ``box_ap50``,
``box_ap75``, ``box_ap_s``/``_m``/``_l`` (COCO's area ranges: below 32², 32² to 96², above 96² pixels);
the same with ``mask_`` for masks; None where COCOeval has nothing to measure (no object of that size),
and ``box_ap_per_class`` (class name -> AP).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterable

import numpy as np
import torch

STAT_KEYS = ("ap", "ap50", "ap75", "ap_s", "ap_m", "ap_l")
MASK_THRESHOLD = 0.5  # torchvision's masks are probabilities; COCO's are binary


def to_coco_results(outputs: Iterable[dict], image_ids: Iterable[int], category_of: dict[int, int] | None = None,
                    masks: bool = True) -> list[dict]:
    """torchvision detections (one dict per image: boxes xyxy, scores, labels, masks) as COCO results."""
    from pycocotools import mask as mask_utils

    res: list[dict] = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        if not len(boxes):
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        scores, labels = out["scores"].detach().float().cpu().tolist(), out["labels"].cpu().tolist()
        rles = None
        if masks and "masks" in out:
            binary = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
        for k in range(len(boxes)):
            item: dict[str, Any] = {"image_id": int(image_id), "bbox": [round(v, 2) for v in xywh[k]],
                                    "score": round(scores[k], 5),
                                    "category_id": category_of[labels[k]] if category_of else int(labels[k])}
            if rles is not None:
                item["segmentation"] = {"size": rles[k]["size"], "counts": rles[k]["counts"].decode("ascii")}
            res.append(item)
    return res


def _pct(v: float) -> float | None:
    return None if v < 0 else round(100.0 * float(v), 3)


def coco_evaluate(gt, results: list[dict], iou_types: Iterable[str] = ("bbox",),
                  image_ids: Iterable[int] | None = None) -> dict[str, Any]:
    """COCOeval of ``results`` against ``gt`` (a pycocotools ``COCO``) for each IoU type (``bbox``,
    ``segm``); quiet. No detection at all scores 0 (not an error)."""
    from pycocotools.cocoeval import COCOeval

    from ..data.shapes_det import coco_from_dict

    ids = sorted(gt.getImgIds() if image_ids is None else image_ids)
    out: dict[str, Any] = {}
    for iou in iou_types:
        prefix = "box" if iou == "bbox" else "mask"
        dets = [r for r in results if iou == "bbox" or "segmentation" in r]
        if not dets:
            out.update({f"{prefix}_{k}": 0.0 for k in STAT_KEYS})
            continue
        dt = coco_from_dict({"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                             "annotations": [{**d, "id": i + 1, "area": d["bbox"][2] * d["bbox"][3],
                                              "iscrowd": 0} for i, d in enumerate(dets)]})
        if iou == "segm":
            from pycocotools import mask as mask_utils

            for a in dt.dataset["annotations"]:
                a["area"] = float(mask_utils.area(a["segmentation"]))
        ev = COCOeval(gt, dt, iou)
        ev.params.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out.update({f"{prefix}_{k}": _pct(v) for k, v in zip(STAT_KEYS, ev.stats[:6])})
        if iou == "bbox":
            prec = ev.eval["precision"]  # [iou thresholds, recall, class, area range, max dets]
            names = {c["id"]: c.get("name", str(c["id"])) for c in gt.dataset["categories"]}
            per = {}
            for k, cat in enumerate(ev.params.catIds):
                p = prec[:, :, k, 0, -1]
                per[names[cat]] = round(100.0 * float(p[p > -1].mean()), 3) if (p > -1).any() else None
            out["box_ap_per_class"] = per
    return out
