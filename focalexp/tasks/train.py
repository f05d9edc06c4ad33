"""The ``train`` task: one training + evaluation run (:mod:`focalexp.train`) per point of the sweep."""

from __future__ import annotations

import functools
from typing import Any, Mapping

from . import Task, register_task

# images per epoch of the datasets whose size the config does not say
_DATASET_IMAGES = {"pathfinder": 20000, "cifar10": 50000, "cifar100": 50000}
IMAGENET_1K_TRAIN = 1281167


@functools.lru_cache(maxsize=4096)
def _gmacs(model_key: str) -> float:
    import json

    from ..models import macs
    from ..models.presets import resolve_config

    cfg = resolve_config(json.loads(model_key))
    try:
        return macs.gmacs(cfg)  # without importing torch, where the analytic counter models the config
    except macs.NotAnalytic:
        from ..analysis.flops import config_gmacs  # picks the counter (fvcore for this config)

        return config_gmacs(cfg)


def model_gmacs(model: Mapping[str, Any]) -> float:
    """GMACs per image (the papers' convention) of a run config's ``model`` section; analytic (no torch)
    where :mod:`focalexp.models.macs` covers the config, fvcore otherwise; remembered per distinct model."""
    import json

    return _gmacs(json.dumps(dict(model), sort_keys=True, default=str))


class RunConfigTask(Task):
    """A task whose config is a run config (:class:`~focalexp.train.config.RunConfig`: recipe, seed,
    model, data, train, eval), resolved by :func:`~focalexp.train.config.resolve_run_config` and carried
    to the node as ``RunConfig.to_dict()``. ``needs_data``: check the data on disk when the sweep is
    submitted (False: only the model matters)."""

    needs_data = True

    def resolve(self, base, overrides, options, *, check_data_present=True):
        from ..train.config import resolve_run_config

        return resolve_run_config(base, overrides, check_data_present=check_data_present and self.needs_data)

    def to_plain(self, config) -> dict[str, Any]:
        return config.to_dict()

    def from_plain(self, plain):
        from ..train.config import RunConfig

        return RunConfig.from_resolved(plain)


@register_task
class TrainTask(RunConfigTask):
    name = "train"
    description = "train and evaluate one model per run (the default)"

    def run_id(self, config, options) -> str:
        return config.run_id

    def images_per_epoch(self, config, estimate) -> int | None:
        if estimate is not None and estimate.train_images:
            return estimate.train_images
        if config.data.train_size:
            return config.data.train_size
        return _DATASET_IMAGES.get(config.data.dataset,
                                   IMAGENET_1K_TRAIN if config.model.get("num_classes") == 1000 else None)

    def uses_gpu(self, config, launcher) -> bool:
        return bool(launcher.gpus_per_node) or config.train.device == "cuda"

    def estimate(self, config, options, estimate) -> dict[str, Any]:
        gm = model_gmacs(config.model)
        images = self.images_per_epoch(config, estimate)
        row: dict[str, Any] = {"gmacs": gm, "images": images}
        if images:
            epochs = config.train.epochs
            total = 3 * gm * images * epochs  # forward + backward ~ 3 x forward
            row.update(epochs=epochs, train_pmacs=total / 1e6,
                       gpu_hours=2 * total * 1e9 / (estimate.gpu_tflops * 1e12) / 3600)
        return row

    def settings(self, launcher, options) -> dict[str, Any]:
        return {"threads": launcher.cpus_per_task}

    def run(self, config, run_dir: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        from ..train.loop import CannotResume, train, write_json

        threads = settings.get("threads")
        if threads and not config.train.threads:
            config.train.threads = threads
        try:
            result = train(config, run_dir, progress=None)  # a job log gets one line per epoch
        except CannotResume as e:
            # no checkpoint of the run's history can be read: the run ends failed with that line (a re-run
            # would only fail again); metrics.jsonl and the damaged files are left as they are
            from pathlib import Path

            result = {"run_id": config.run_id, "status": "failed", "reason": str(e)}
            write_json(Path(run_dir) / "result.json", result)
        if result.get("status") == "failed":
            # a failed run must look failed to the scheduler too (not COMPLETED, as with Hydra)
            raise RuntimeError(f"run failed: {result.get('reason')}")
        return result
