"""A shuffling sampler whose order depends only on (seed, epoch), so resumed runs see the same data."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Indices 0..n-1, shuffled with a generator seeded by `seed + epoch`.

    Lightning calls `set_epoch(epoch)` at the start of each epoch (also through its distributed
    sampler wrapper), so a run resumed at an epoch boundary reproduces the order of the original
    run. With `shuffle=False` the order is 0..n-1 every epoch.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n < 0:
            raise ValueError(f"EpochShuffleSampler needs n >= 0, got {n}.")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        # a private generator: the global RNG state (and other consumers of it) does not matter
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n
