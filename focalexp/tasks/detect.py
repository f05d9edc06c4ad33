"""The ``detect`` task: train and evaluate one detector (:mod:`focalexp.detection`) per point of the sweep.

A spec's ``base:`` is a detection run config (sections recipe, seed, model, detector, data, train, eval)
and its grid varies any dotted key of it, e.g. ``model.focal_levels`` of the backbone::

    task: detect
    base: {recipe: det_cpu_small}
    grid: {model.focal_levels: [0, 1, 2, 3]}
"""

from __future__ import annotations

from typing import Any, Mapping

from . import Task, register_task

COCO_TRAIN_IMAGES = 118287  # train2017 (images without objects are kept: torchvision's detectors take them)


@register_task
class DetectTask(Task):
    name = "detect"
    description = "train and evaluate one detector per run (torchvision Mask R-CNN/RetinaNet/FCOS, COCOeval)"

    def resolve(self, base, overrides, options, *, check_data_present=True):
        from ..detection.config import resolve_detect_config

        return resolve_detect_config(base, overrides, check_data_present=check_data_present)

    def to_plain(self, config) -> dict[str, Any]:
        return config.to_dict()

    def from_plain(self, plain):
        from ..detection.config import DetectConfig

        return DetectConfig.from_resolved(plain)

    def run_id(self, config, options) -> str:
        return config.run_id

    def uses_gpu(self, config, launcher) -> bool:
        return bool(launcher.gpus_per_node) or config.train.device == "cuda"

    def estimate(self, config, options, estimate) -> dict[str, Any]:
        from ..detection.flops import run_gmacs

        gm, _ = run_gmacs(config)
        n_train, _ = config.sizes()
        images = n_train or (COCO_TRAIN_IMAGES if config.data.dataset == "coco" else None)
        row: dict[str, Any] = {"gmacs": gm, "images": images}
        if images:
            epochs = config.train.epochs
            total = 3 * gm * images * epochs
            row.update(epochs=epochs, train_pmacs=total / 1e6,
                       gpu_hours=2 * total * 1e9 / (estimate.gpu_tflops * 1e12) / 3600)
        return row

    def settings(self, launcher, options) -> dict[str, Any]:
        return {"threads": launcher.cpus_per_task}

    def run(self, config, run_dir: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        from pathlib import Path

        from ..detection.trainer import train_detector
        from ..train.loop import CannotResume, write_json

        threads = settings.get("threads")
        if threads and not config.train.threads:
            config.train.threads = threads
        try:
            result = train_detector(config, run_dir, progress=None)
        except CannotResume as e:
            result = {"run_id": config.run_id, "status": "failed", "reason": str(e)}
            write_json(Path(run_dir) / "result.json", result)
        if result.get("status") == "failed":
            raise RuntimeError(f"run failed: {result.get('reason')}")
        return result
