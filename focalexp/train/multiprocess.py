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
            resume: str | None, provenance: dict | None = None, trainer: type | None = None, errors=None) -> None:
    import multiprocessing
    import sys

    from ..errors import FocalexpError

    if sys.platform == "linux":
        # as under torchrun, the DataLoader's workers fork from this process; started by mp.spawn, it would
        # spawn them, each importing torch and focalexp again, every epoch (~25 s of a 3-epoch CPU run here)
        multiprocessing.set_start_method("fork", force=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    if trainer is None:
        from .loop import Trainer as trainer
    try:
        trainer(trainer.config_cls.from_resolved(config), out, resume=resume, progress=progress if rank == 0 else False,
                provenance=provenance).run()
    except FocalexpError as e:  # bad input found mid-run (a damaged image): the parent says it, in one line
        if errors is not None:
            errors.put(e)
        raise SystemExit(2) from None


def train_multiprocess(config: dict[str, Any], out: str, nproc: int, progress: bool | None = None,
                       resume: str | None = None, provenance: dict | None = None, trainer: type | None = None) -> None:
    """Train ``config`` (a resolved run config, ``RunConfig.to_dict()``: not validated again) on ``nproc``
    local processes, each continuing from ``resume`` when given. ``trainer``: the Trainer class (default:
    the classifier's); it reaches the processes by reference (its module is imported there). A
    :class:`~focalexp.errors.FocalexpError` in any process (the others are then stopped) is raised here,
    the same error with its one line, not the process's traceback."""
    import logging

    errors = mp.get_context("spawn").SimpleQueue()
    # torch logs a warning per process it stops after another failed: noise beside the one line we print
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    try:
        mp.spawn(_worker, args=(nproc, _free_port(), config, out, progress, resume, provenance, trainer, errors),
                 nprocs=nproc, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        if not errors.empty():
            raise errors.get() from None
        raise
    finally:
        errors.close()
