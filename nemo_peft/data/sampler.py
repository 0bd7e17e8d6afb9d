"""Data order that survives a restart anywhere, not only at epoch boundaries, and splits over
data-parallel processes.

`EpochShuffleSampler` fixes each epoch's order by (seed, epoch) and can start a pass part-way
through it; with `replicas > 1` each process takes every `replicas`-th sample of that one global
order, so the processes' micro-batches of a step together hold the samples one process with a
`replicas`-times larger micro-batch would see. `ResumableDataLoader` counts the samples (global,
all processes) handed to training and gives that position to Lightning, whose fit loop stores it
in every checkpoint ("combined_loader" in the loop state) and hands it back before the first
batch of a resumed run. The position is in global samples, so a run can resume on another
number of processes.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """Indices 0..n-1, shuffled with a generator seeded by `seed + epoch`, from sample `start` on;
    process `rank` of `replicas` takes positions rank, rank + replicas, ... of what is left.

    Lightning calls `set_epoch(epoch)` at the start of each epoch. `start` (samples of this epoch
    already trained on, all processes together) is set by a restored checkpoint and applies to the
    next pass only. With `shuffle=False` the order is 0..n-1. Every process must get as many
    samples as the others (DDP steps together): training drops the last `left % replicas`
    samples of an epoch (fewer than `replicas`); evaluation (`pad=True`) instead pads with repeats
    yielded as `index + n`, which `Padded` marks as duplicates so each sample is scored once.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, replicas: int = 1, rank: int = 0,
                 pad: bool = False):
        if n < 0:
            raise ValueError(f"EpochShuffleSampler needs n >= 0, got {n}.")
        if not 0 <= rank < replicas:
            raise ValueError(f"EpochShuffleSampler needs 0 <= rank < replicas, got rank {rank} of {replicas}.")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.replicas, self.rank, self.pad = replicas, rank, pad
        self.epoch = 0
        self.start = 0
        self._restored, self._offset = False, 0  # see set_epoch

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        if self._restored:
            # The first epoch after a restore continues the saved position, whatever Lightning counts: a run
            # stopped by max_steps mid-epoch is saved as a finished epoch, yet its data epoch is not done.
            self._restored = False
            self._offset = self.epoch - epoch
            return
        epoch += self._offset
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

    def _share(self, left: int) -> int:
        """How many of ``left`` remaining samples each process takes."""
        return -(-left // self.replicas) if self.pad else left // self.replicas

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        rest = self.order()[start:]
        share = self._share(len(rest))
        if self.pad and rest:  # repeats, marked by + n, fill the last row of processes
            rest += [rest[i % len(rest)] + self.n for i in range(share * self.replicas - len(rest))]
        return iter(rest[self.rank::self.replicas][:share])

    def __len__(self) -> int:
        # this process's share of the full epoch: Lightning counts a resumed epoch's batches from its first one
        return self._share(self.n)

    def epoch_done(self, consumed: int) -> bool:
        """Whether nothing of the epoch is left for a pass after ``consumed`` samples."""
        return self._share(self.n - consumed) == 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start, "n": self.n, "seed": self.seed, "shuffle": self.shuffle,
                "replicas": self.replicas}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.start = int(state["epoch"]), int(state["start"])
        self._restored = True


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochShuffleSampler` whose position Lightning checkpoints.

    The position counts the batches this loader has yielded, i.e. after worker prefetching,
    which Lightning's fit loop (no prefetch for sized loaders) hands straight to training_step.
    """

    _pass: dict | None = None  # {"epoch", "consumed"} of the pass being iterated
    _told = False

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
        for batch in super().__iter__():  # each process's batch: batch_size samples of the global order
            self._pass["consumed"] = min(self._pass["consumed"] + self.batch_size * sampler.replicas, sampler.n)
            yield batch

    def state_dict(self) -> dict:
        sampler = self._position_sampler()
        if sampler is None:
            return {}
        state = {**sampler.state_dict(), "micro_batch_size": self.batch_size}
        if self._pass is not None:
            state["epoch"], state["start"] = self._pass["epoch"], self._pass["consumed"]
        if sampler.n and sampler.epoch_done(state["start"]):  # the epoch is used up: resume at the next one
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
        saved = int(state.get("replicas", 1))
        if saved != sampler.replicas and sampler.rank == 0 and not self._told:
            self._told = True  # Lightning hands the position to the data module and to the fit loop
            dropped = (sampler.n - state["start"]) % sampler.replicas
            print(f"Data position: resuming epoch {state['epoch']} at sample {state['start']} of {sampler.n} in the "
                  f"global order, which the checkpoint's {saved} data-parallel process(es) had trained on; this run's "
                  f"{sampler.replicas} process(es) split the rest of the epoch, so no sample is replayed or skipped"
                  + (f" (the epoch's last {dropped} sample(s) are dropped so every process steps together)."
                     if dropped else "."))


class Padded(torch.utils.data.Dataset):
    """An evaluation dataset read through a padding `EpochShuffleSampler`: index i >= n is a repeat
    of i - n, marked ``duplicate`` so exact match and loss count each sample once."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        n = len(self.dataset)
        return {**self.dataset[i % n], "duplicate": i >= n}
