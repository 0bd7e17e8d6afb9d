"""Data order that survives a restart anywhere, not only at epoch boundaries.

`EpochShuffleSampler` fixes each epoch's order by (seed, epoch) and can start a pass part-way
through it. `ResumableDataLoader` counts the samples it has handed to training and gives that
position to Lightning, whose fit loop stores it in every checkpoint ("combined_loader" in the
loop state) and hands it back before the first batch of a resumed run.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Indices 0..n-1, shuffled with a generator seeded by `seed + epoch`, from sample `start` on.

    Lightning calls `set_epoch(epoch)` at the start of each epoch (also through its distributed
    sampler wrapper). `start` (samples of this epoch already trained on) is set by a restored
    checkpoint and applies to the next pass only. With `shuffle=False` the order is 0..n-1.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        if n < 0:
            raise ValueError(f"EpochShuffleSampler needs n >= 0, got {n}.")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if epoch != self.epoch:
            self.start = 0  # a restored mid-epoch position belongs to its own epoch only
        self.epoch = epoch

    def order(self) -> list[int]:
        """The whole epoch's order. Data-parallel ranks would each take a slice of order()[start:]."""
        if not self.shuffle:
            return list(range(self.n))
        # a private generator: the global RNG state (and other consumers of it) does not matter
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return iter(self.order()[start:])

    def __len__(self) -> int:
        # the full epoch: Lightning counts a resumed epoch's batches from its first one
        return self.n

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "n": self.n, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.start = int(state["epoch"]), int(state["start"])


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochShuffleSampler` whose position Lightning checkpoints.

    The position counts the batches this loader has yielded, i.e. after worker prefetching,
    which Lightning's fit loop (no prefetch for sized loaders) hands straight to training_step.
    """

    _pass: dict | None = None  # {"epoch", "consumed"} of the pass being iterated

    def _position_sampler(self) -> EpochShuffleSampler | None:
        # None when Lightning rebuilt this loader around its own sampler (predict, distributed)
        return self.sampler if isinstance(self.sampler, EpochShuffleSampler) else None

    def __iter__(self):
        # A generator: nothing is read until the first batch is asked for, i.e. after Lightning
        # has called set_epoch() and, when resuming, load_state_dict().
        sampler = self._position_sampler()
        if sampler is None:
            yield from super().__iter__()
            return
        self._pass = {"epoch": sampler.epoch, "consumed": sampler.start}
        for batch in super().__iter__():
            self._pass["consumed"] = min(self._pass["consumed"] + self.batch_size, sampler.n)
            yield batch

    def state_dict(self) -> dict:
        sampler = self._position_sampler()
        if sampler is None:
            return {}
        state = sampler.state_dict()
        if self._pass is not None:
            state["epoch"], state["start"] = self._pass["epoch"], self._pass["consumed"]
        if sampler.n and state["start"] >= sampler.n:  # the epoch is used up: resume at the next one
            state["epoch"], state["start"] = state["epoch"] + 1, 0
        return state

    def load_state_dict(self, state: dict) -> None:
        sampler = self._position_sampler()
        if not state:
            return
        if sampler is None:
            warnings.warn(f"Cannot restore the data position into a {type(self.sampler).__name__}: the resumed "
                          "epoch restarts from its first batch.", stacklevel=2)
            return
        state = dict(state)
        changed = [f"{k} {state[k]!r} -> {getattr(sampler, k)!r}" for k in ("n", "seed", "shuffle")
                   if k in state and state[k] != getattr(sampler, k)]
        if changed and state["start"]:
            warnings.warn(f"The training data differs from the checkpoint's ({', '.join(changed)}; n = number of "
                          f"samples): resuming at the start of epoch {state['epoch']} instead of sample "
                          f"{state['start']}, so this run will not match an uninterrupted one. Resume with the "
                          "same data.train_ds for an exact continuation.", stacklevel=2)
            state["start"] = 0
        sampler.load_state_dict(state)
        self._pass = None
