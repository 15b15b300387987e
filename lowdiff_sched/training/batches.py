"""Which dataset items each process trains on at each step.

Epoch e visits the items in a seeded random permutation; global batches are consecutive
runs of that stream (crossing epoch boundaries), and rank r of W takes rows
[r B/W, (r+1) B/W) of each. The position after k steps is simply k * B, so resuming needs
only the step count.
"""

from __future__ import annotations

from typing import Iterator

import torch

from .seeds import DATA_ORDER, derive_seed


class StepBatches(torch.utils.data.Sampler[list[int]]):
    """Batch sampler yielding one process's dataset indices for steps start..stop-1."""

    def __init__(self, size: int, batch: int, seed: int, *, start: int, stop: int, rank: int = 0, world: int = 1) -> None:
        if size < 1:
            raise ValueError(f"the dataset is empty (size {size})")
        if batch % world:
            raise ValueError(f"batch {batch} does not split evenly over {world} processes")
        self.size, self.batch, self.seed = size, batch, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(derive_seed(self.seed, DATA_ORDER, epoch))
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.size, generator=g)
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[int]:
        """All B dataset indices of a step, in row order."""
        positions = torch.arange(step * self.batch, (step + 1) * self.batch)
        epochs = positions // self.size
        indices = torch.empty_like(positions)
        for epoch in torch.unique(epochs).tolist():
            rows = epochs == epoch
            indices[rows] = self.permutation(epoch)[positions[rows] % self.size]
        return indices.tolist()

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch // self.world
        for step in range(self.start, self.stop):
            yield self.global_batch(step)[self.rank * share : (self.rank + 1) * share]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
