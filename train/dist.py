"""One process or many: DDP under ``torchrun`` (NCCL on GPUs, gloo on CPUs), or a plain single process.

The same command works both ways: ``torchrun`` sets RANK / WORLD_SIZE / LOCAL_RANK and the rendezvous
variables; without them this is rank 0 of 1 and no process group is created. Only rank 0 logs and
writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from model.runtime import pick_device


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over ranks in place (a no-op for one process); returns it."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def setup(device_choice: str) -> Dist:
    """Join the process group if launched by torchrun; pick this rank's device (`model.runtime.pick_device`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_choice, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
    return Dist(rank, local_rank, world, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
