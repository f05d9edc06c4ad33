"""Run one training on N local processes (CPU gloo or one GPU each), like torchrun, for `--nproc`."""

from __future__ import annotations

import os
import socket
from typing import Any

import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: dict, out: str, progress: bool | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from .config import resolve_run_config
    from .loop import train

    train(resolve_run_config(config), out, progress=progress if rank == 0 else False)


def train_multiprocess(config: dict[str, Any], out: str, nproc: int, progress: bool | None = None) -> None:
    """Train ``config`` (a resolved run config dict) on ``nproc`` local processes."""
    mp.spawn(_worker, args=(nproc, _free_port(), config, out, progress), nprocs=nproc, join=True)
