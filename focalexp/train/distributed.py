"""torch.distributed from the job's environment: submitit (SLURM or local tasks), torchrun, or none.

Ranks share one global batch: each takes its contiguous slice of every global batch, gradients are
averaged by DDP, and only rank 0 writes to the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _submitit_tasks() -> int:
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return 0
    try:
        import submitit

        return submitit.JobEnvironment().num_tasks
    except Exception:  # not inside a submitit job
        return 0


def setup_distributed(device_type: str) -> DistInfo:
    """Initialise the process group when the job has several tasks; a no-op otherwise."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        device=device_type)
    if _submitit_tasks() > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True, device_type)
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank % max(1, torch.cuda.device_count()))
    return info


def teardown(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
