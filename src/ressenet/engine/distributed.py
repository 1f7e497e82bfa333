"""Data-parallel set-up through torchrun's environment; one CPU/GPU process takes the same path.

Detect torchrun from ``RANK``/``WORLD_SIZE`` (as nanoGPT does), reduce metrics across ranks, write on rank 0 only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "all_reduce_sum", "agreed_signal", "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun with more than one process (NCCL on GPU, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sums ``t`` over the processes in place (a no-op when not distributed); returns it."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agreed_signal(stop: list[int], info: DistInfo, device: torch.device) -> int:
    """The stop signal any process has received (0: none), the same in every process. torchrun's processes get a
    signal at slightly different steps; one that stopped alone would leave the others waiting in a collective."""
    signum = stop[0] if stop else 0
    if info.enabled:
        t = torch.tensor([signum], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        signum = int(t.item())
    return signum


def barrier(info: DistInfo) -> None:
    """Waits for every process (a no-op when not distributed)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Ends the process group, if this process started one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
