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


def _worker(rank: int, world: int, port: int, config: dict, out: str, progress: bool | None,
            resume: str | None, provenance: dict | None = None, trainer: type | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    if trainer is None:
        from .loop import Trainer as trainer
    trainer(trainer.config_cls.from_resolved(config), out, resume=resume, progress=progress if rank == 0 else False,
                provenance=provenance).run()


def train_multiprocess(config: dict[str, Any], out: str, nproc: int, progress: bool | None = None,
                       resume: str | None = None, provenance: dict | None = None, trainer: type | None = None) -> None:
    """Train ``config`` (a resolved run config, ``RunConfig.to_dict()``: not validated again) on ``nproc``
    local processes, each continuing from ``resume`` when given. ``trainer``: the Trainer class (default:
    the classifier's); it reaches the processes by reference (its module is imported there)."""
    mp.spawn(_worker, args=(nproc, _free_port(), config, out, progress, resume, provenance, trainer), nprocs=nproc,
             join=True)
