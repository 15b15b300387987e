"""Data parallelism on plain torch.distributed, as set up by torchrun (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo on CPU, nccl on CUDA.

Gradients are averaged with explicit all-reduces after backward rather than by
DistributedDataParallel, because the loss calls `model.denoise`, not `model.forward`,
and DDP only hooks the latter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

BUCKET_ELEMENTS = 1 << 24  # gradients are reduced in flat buckets of at most this many elements


@dataclass
class Processes:
    """This process's place in the job: rank, world size, and whether we own the process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, name: str) -> str:
        """The device this process computes on: under torchrun "cuda" means cuda:LOCAL_RANK."""
        return f"cuda:{self.local_rank}" if name == "cuda" and self.active else name

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False


def join_processes(device: torch.device) -> Processes:
    """Join the torchrun job described by the environment (a one-process job without one)."""
    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owns_group=True)


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


@torch.no_grad()
def broadcast_parameters(model: nn.Module, procs: Processes) -> None:
    """Give every rank rank 0's parameters and buffers, so all start from the same weights."""
    if procs.active:
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


@torch.no_grad()
def average_gradients(model: nn.Module, procs: Processes) -> None:
    """Replace each gradient by its mean over ranks (every rank's graph touches the same parameters)."""
    if not procs.active:
        return
    bucket: list[torch.Tensor] = []
    size = 0
    for g in (p.grad for p in model.parameters() if p.grad is not None):
        bucket.append(g)
        size += g.numel()
        if size >= BUCKET_ELEMENTS:
            _reduce_bucket(bucket, procs.world)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, procs.world)


def _reduce_bucket(grads: list[torch.Tensor], world: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_over_ranks(values: torch.Tensor, procs: Processes) -> torch.Tensor:
    """Element-wise sum of a small tensor over ranks (identity in a one-process job)."""
    if procs.active:
        values = values.clone()
        dist.all_reduce(values)
    return values


_T = TypeVar("_T")


def gather_objects(obj: _T, procs: Processes) -> list[_T]:
    """Every rank's `obj`, in rank order, on every rank (a list of one in a one-process job)."""
    if not procs.active:
        return [obj]
    out: list[Any] = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out
