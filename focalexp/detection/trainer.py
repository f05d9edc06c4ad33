"""One detection run: :class:`DetectionTrainer`, the classifier's :class:`~focalexp.train.loop.Trainer`
with a detector, detection data and COCOeval, so that exact resume, preemption, DDP, a full disk and the
trackers behave as for a classifier.

Run directory: as a classifier's (``config.yaml``, ``metrics.jsonl``, ``last.pth``, ``last.prev.pth``,
``best.pth``: the detector's weights at the best box AP, ``result.json``, ``tb/``). ``metrics.jsonl`` rows
hold ``train_loss`` and the COCOeval numbers (``box_ap``, ``box_ap50``, ..., ``mask_ap``, ...: percent);
``result.json`` the last evaluation's, ``best_box_ap``, the detector's parameters, its GMACs at the test
size and the backbone's (Shapes-det: at its image size; COCO: at 1280 x 800, the papers').
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..train.distributed import all_reduce_sum
from ..train.loop import EpochBatches, Trainer, batches
from .config import DetectConfig
from .data import build_det_data, collate

SHAPES_CONTEXT_CLASS = "target"  # the class only its surroundings tell apart (Shapes-det)


class DetectionTrainer(Trainer):
    config_cls = DetectConfig
    primary = "box_ap"
    collate = staticmethod(collate)
    find_unused_parameters = True  # frozen stages; a batch without objects leaves mask-head grads unused
    cfg: DetectConfig

    def _check_memory(self, processes: int) -> None:
        from .config import check_memory

        check_memory(self.cfg, processes)

    def _build_data_and_model(self) -> None:
        from .model import build_detector

        self.data = build_det_data(self.cfg)
        self.model = build_detector(self.cfg, self.data.num_classes).to(self.device)
        if self.cfg.train.grad_checkpointing and hasattr(self.model.backbone.backbone.body, "set_grad_checkpointing"):
            self.model.backbone.backbone.body.set_grad_checkpointing(True)

    def _build_loss(self) -> None:
        self.mixup = None

    def _loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        images, targets = batch
        dev = self.device
        images = [im.to(dev, non_blocking=True) for im in images]
        targets = [{k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with self._autocast():
            losses = self.net(images, targets)
        return sum(losses.values()), len(images)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """COCOeval of the validation set: each rank detects its share, rank 0 scores them all."""
        from .evaluate import coco_evaluate, to_coco_results

        model.eval()
        bs = self.cfg.eval.batch_size or self.cfg.train.batch_size
        sampler = EpochBatches(len(self.data.val), bs, self.dist, 0, 0, shuffle=False, drop_last=False)
        loader = torch.utils.data.DataLoader(self.data.val, batch_sampler=sampler, num_workers=self.cfg.data.workers,
                                             collate_fn=collate)
        masks = self.cfg.detector.arch == "maskrcnn"
        results: list[dict] = []
        with batches(loader) as items:
            for images, targets in items:
                with self._autocast():
                    outputs = model([im.to(self.device) for im in images])
                results += to_coco_results(outputs, [t["image_id"] for t in targets], self.data.category_of, masks)
        if self.dist.world_size > 1:
            gathered: list = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, results)  # our own processes' plain lists
            results = [r for part in gathered for r in part]
        metrics = coco_evaluate(self.data.val_coco, results, ("bbox", "segm") if masks else ("bbox",))
        per = metrics.get("box_ap_per_class") or {}
        if SHAPES_CONTEXT_CLASS in per and self.cfg.data.dataset == "shapes":
            metrics["box_ap_context"] = per[SHAPES_CONTEXT_CLASS]
        metrics["detections"] = len(results)
        all_reduce_sum(torch.zeros(1, dtype=torch.float64, device=self.device), self.dist)  # ranks leave together
        return metrics

    def _save_best(self, epoch: int, row: dict) -> None:
        from ..models.checkpoint import atomic_save

        atomic_save({"format": "focalexp-detector", "config": self.cfg.to_dict(), "model": self.model.state_dict(),
                     "epoch": epoch, "box_ap": row.get("box_ap")}, self.out / "best.pth")

    def _result_base(self) -> dict:
        if not hasattr(self, "_base"):
            from .flops import counted_size, run_gmacs
            from .model import backbone_origin

            params = sum(p.numel() for p in self.model.parameters())
            backbone = self.model.backbone.backbone
            gmacs, backbone_gmacs = run_gmacs(self.cfg)
            h, w, _ = counted_size(self.cfg)
            self._base = {"run_id": self.cfg.run_id, "params": params,
                          "backbone_params": sum(p.numel() for p in backbone.parameters()),
                          "model": self._model_name(), "detector": self.cfg.detector.arch,
                          "gmacs": gmacs, "backbone_gmacs": backbone_gmacs, "gmacs_size": f"{h}x{w}",
                          **backbone_origin(self.cfg)}
        return dict(self._base)

    def _summary(self, metrics: list[dict] | None = None) -> dict:
        from .evaluate import STAT_KEYS

        metrics = self.metrics if metrics is None else metrics
        last = next((m for m in reversed(metrics) if "box_ap" in m), {})
        base = super()._summary(metrics)
        for k in ("top1", "top5", "eval_loss", "ema_top1", "best_top1"):
            base.pop(k, None)
        keys = [f"{p}_{k}" for p in ("box", "mask") for k in STAT_KEYS] + ["box_ap_context", "box_ap_per_class"]
        keys += [f"ema_{k}" for k in keys if not k.endswith("per_class")]  # train.ema: the EMA weights' numbers
        base.update({k: last[k] for k in keys if k in last})
        base["best_box_ap"] = self.best_top1 if self.best_top1 >= 0 else None
        return base


def train_detector(cfg: DetectConfig, out, **kwargs) -> dict:
    """Train and evaluate the detector of ``cfg`` in run dir ``out`` (see :func:`focalexp.train.loop.train`:
    ``resume``, ``progress``, ``nproc``, ``provenance``)."""
    from ..train.loop import train

    return train(cfg, out, trainer=DetectionTrainer, **kwargs)


__all__ = ["DetectionTrainer", "train_detector"]
