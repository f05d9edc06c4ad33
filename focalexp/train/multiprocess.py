"""One training on N local processes (CPU gloo, or one GPU each), like torchrun: ``train(..., nproc=N)``."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_for(kind: str) -> tuple[type, type]:
    """``(config class, trainer class)`` of a kind of training: ``train`` (a classifier) or ``detect``."""
    if kind == "detect":
        from ..detection.config import DetectConfig
        from ..detection.trainer import DetectionTrainer

        return DetectConfig, DetectionTrainer
    if kind != "train":
        raise ValueError(f"unknown kind of training {kind!r}")
    from .config import RunConfig
    from .loop import Trainer

    return RunConfig, Trainer


def _worker(rank: int, world: int, port: int, config: dict, out: str, progress: bool | None,
            resume: str | None, provenance: dict | None = None, kind: str = "train") -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    config_cls, trainer_cls = trainer_for(kind)
    trainer_cls(config_cls.from_resolved(config), out, resume=resume, progress=progress if rank == 0 else False,
                provenance=provenance).run()


def train_multiprocess(config: dict[str, Any], out: str, nproc: int, progress: bool | None = None,
                       resume: str | None = None, provenance: dict | None = None, kind: str = "train") -> None:
    """Train ``config`` (a resolved run config, ``RunConfig.to_dict()``: not validated again) on ``nproc``
    local processes, each continuing from ``resume`` when given."""
    mp.spawn(_worker, args=(nproc, _free_port(), config, out, progress, resume, provenance, kind), nprocs=nproc,
             join=True)
