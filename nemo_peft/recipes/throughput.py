"""Training throughput and peak memory per rank, printed as one table by global rank 0 at the end of fit."""
from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch

from nemo_peft.recipes.run_log import get_logger

IGNORE_INDEX = -100  # labels that carry no loss when a batch has no loss_mask (T5-style batches)
PREFIX = "[throughput]"  # every printed line starts with it, so logs can be grepped


class ThroughputMonitor(L.Callback):
    """Tokens/s, trained tokens/s and peak memory of each rank over the training batches.

    The first ``warmup_steps`` optimizer steps of a fit are not timed (compilation, allocator and
    cache warmup); a fit with no more steps than that is timed whole. Only the time inside training
    batches (forward, backward, optimizer step) counts: data loading and checkpoint writes do not.
    """

    def __init__(self, warmup_steps: int = 2, verbose: bool = True):
        if warmup_steps < 0:
            raise ValueError(f"ThroughputMonitor(warmup_steps={warmup_steps}): must be >= 0.")
        self.warmup_steps, self.verbose = warmup_steps, verbose
        self.per_rank: list[dict] = []
        self.total: dict = {}

    # ---- per-rank measurement ----
    def on_train_start(self, trainer, pl_module):
        self.device = trainer.strategy.root_device
        self.first_step = trainer.global_step  # a resumed fit starts past 0
        # two windows: every batch, and the batches after warmup (used when there are any)
        self.all = {"tokens": 0, "trained_tokens": 0, "seconds": 0.0, "steps": set()}
        self.timed = {"tokens": 0, "trained_tokens": 0, "seconds": 0.0, "steps": set()}
        self.per_rank, self.total = [], {}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self):
        if self.device.type == "cuda":  # kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync()
        self._step = trainer.global_step  # the optimizer step this batch contributes to (before it is taken)
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync()
        seconds = time.perf_counter() - self._t0
        tokens, trained = count_tokens(batch)
        windows = [self.all]
        if self._step - self.first_step >= self.warmup_steps:
            windows.append(self.timed)
        for w in windows:
            w["tokens"] += tokens
            w["trained_tokens"] += trained
            w["seconds"] += seconds
            w["steps"].add(self._step)

    def peak_mem_mib(self) -> float:
        return peak_memory_mib(self.device)

    # ---- gather and report ----
    def on_train_end(self, trainer, pl_module):
        w = self.timed if self.timed["steps"] else self.all
        seconds = max(w["seconds"], 1e-9)
        mine = torch.tensor([trainer.global_rank, w["tokens"] / seconds, w["trained_tokens"] / seconds,
                             self.peak_mem_mib(), len(w["steps"]), w["tokens"], w["trained_tokens"], w["seconds"]],
                            dtype=torch.float64, device=self.device)
        # every rank must take part in the gather; one process gets [8] back, N processes [N, 8]
        rows = trainer.strategy.all_gather(mine).reshape(-1, mine.numel()).cpu().tolist()
        keys = ("rank", "tokens_per_s", "trained_tokens_per_s", "peak_mem_mib", "steps", "tokens",
                "trained_tokens", "seconds")
        ints = ("rank", "steps", "tokens", "trained_tokens")
        self.per_rank = [{k: int(v) if k in ints else v for k, v in zip(keys, row)} for row in rows]
        self.per_rank.sort(key=lambda r: r["rank"])
        self.total = {"tokens_per_s": sum(r["tokens_per_s"] for r in self.per_rank),
                      "trained_tokens_per_s": sum(r["trained_tokens_per_s"] for r in self.per_rank),
                      "peak_mem_mib": max(r["peak_mem_mib"] for r in self.per_rank),  # what must fit on one device
                      "steps": max(r["steps"] for r in self.per_rank),
                      "warmup_skipped": w is self.timed and self.warmup_steps > 0}
        if self.verbose and trainer.is_global_zero:
            get_logger().info("\n".join(self.summary_lines()))

    def summary_lines(self) -> list[str]:
        """The table: a title, a header, one line per rank, and the total (tokens/s summed over ranks,
        peak memory the largest rank's). Empty before a fit has ended."""
        if not self.per_rank:
            return []
        skipped = f"after {self.warmup_steps} warmup steps" if self.total["warmup_skipped"] else "no warmup skipped"
        mem = "CUDA max allocated" if self.device.type == "cuda" else "CPU peak RSS"
        lines = [f"{PREFIX} {len(self.per_rank)} rank(s), {self.total['steps']} optimizer steps timed ({skipped}), "
                 f"peak memory = {mem}",
                 f"{PREFIX} {'rank':>5} {'tokens/s':>12} {'trained tok/s':>14} {'peak MiB':>10} {'steps':>6}"]
        for r in self.per_rank:
            lines.append(f"{PREFIX} {r['rank']:>5d} {r['tokens_per_s']:>12.1f} {r['trained_tokens_per_s']:>14.1f} "
                         f"{r['peak_mem_mib']:>10.1f} {r['steps']:>6d}")
        t = self.total
        lines.append(f"{PREFIX} {'total':>5} {t['tokens_per_s']:>12.1f} {t['trained_tokens_per_s']:>14.1f} "
                     f"{t['peak_mem_mib']:>10.1f} {t['steps']:>6d}")
        return lines


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA max allocated on a GPU, else the CPU peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def count_tokens(batch) -> tuple[int, int]:
    """(tokens fed, tokens trained on) of one batch: loss_mask when the batch has one, else labels != -100."""
    tokens = int(batch["input_ids"].numel())
    if batch.get("loss_mask") is not None:
        return tokens, int(batch["loss_mask"].sum())
    if batch.get("labels") is not None:
        return tokens, int((batch["labels"] != IGNORE_INDEX).sum())
    return tokens, 0
