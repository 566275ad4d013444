"""Distributed data parallel when launched by ``torchrun`` (WORLD_SIZE > 1); a no-op single process otherwise.

gloo on CPU, nccl on CUDA with one GPU per process (LOCAL_RANK). Every rank computes the same deterministic data order
and reads its own share of it (see samples.py); rank 0 alone writes checkpoints and logs.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..models.loaded import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (already on ``device``) when distributed."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average of a scalar over ranks (for the logged loss)."""
        if self.active:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def gather(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Equal-shaped tensors of all ranks, in rank order."""
        if not self.active:
            return [values]
        gathered = [torch.empty_like(values) for _ in range(self.world_size)]
        dist.all_gather(gathered, values)
        return gathered


@contextmanager
def distributed(device: str = "auto") -> Iterator[DistributedContext]:
    """Join the torchrun process group for the duration of training (and leave it on any exit)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield DistributedContext(0, 1, resolve_device(device))
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    try:
        yield DistributedContext(dist.get_rank(), world_size, resolved)
    finally:
        dist.destroy_process_group()
