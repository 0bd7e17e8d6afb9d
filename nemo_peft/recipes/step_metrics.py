"""Per-step training metrics for the loggers and the progress bar: tokens/s, trained tokens, peak memory.

The SFT module itself logs ``train_loss``, ``lr`` and ``grad_norm``; validation / test loss and exact match
come from its evaluation. This callback adds, at every optimizer step:

- ``tokens_per_s``: tokens fed (all data-parallel processes) per second of this step's training batches
  (forward, backward, optimizer step; data loading not counted), shown in the progress bar as ``tok/s``;
- ``trained_tokens``: answer tokens trained on since the run began (kept in checkpoints, so a resumed run
  continues the count);
- ``peak_mem_mib``: peak memory of this process: CPU peak RSS, or CUDA max allocated on a GPU.
"""
from __future__ import annotations

import time

import lightning as L
import torch

from nemo_peft.recipes.throughput import count_tokens, peak_memory_mib


class StepMetrics(L.Callback):
    def __init__(self):
        self.trained_tokens = 0
        self._align_log_step = False
        self._window = [0, 0, 0.0]  # tokens, trained tokens, seconds since the last optimizer step

    def state_dict(self) -> dict:
        return {"trained_tokens": self.trained_tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.trained_tokens = int(state_dict.get("trained_tokens", 0))

    def on_train_start(self, trainer, pl_module):
        self._align_log_step = True

    def _align(self, trainer):
        # Lightning logs at fit_loop.epoch_loop._batches_that_stepped. A fit resumed from a checkpoint written at
        # the end of a training batch can restore it one short of global_step (its loop's reset() adds the
        # missing 1 only in some restart states; seen under DDP), which logs every later row one step early,
        # clashing with the rows the interrupted run wrote (tests/recipes/test_scale_out.py's resume tests).
        # With one optimizer the two count the same steps. Done at the first batch, after the loops' resets.
        self._align_log_step = False
        loop = trainer.fit_loop.epoch_loop
        if len(trainer.optimizers) == 1 and loop._batches_that_stepped != trainer.global_step:
            loop._batches_that_stepped = trainer.global_step

    def _sync(self, trainer):
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._align_log_step:
            self._align(trainer)
        self._sync(trainer)
        self._step, self._t0 = trainer.global_step, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(trainer)
        tokens, trained = count_tokens(batch)
        w = self._window
        w[0], w[1], w[2] = w[0] + tokens, w[1] + trained, w[2] + time.perf_counter() - self._t0
        if trainer.global_step == self._step:  # an accumulation micro-batch: the step is not taken yet
            return
        counts = torch.tensor(w[:2], dtype=torch.float64, device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        tokens, trained = counts.tolist()
        self.trained_tokens += int(trained)
        device = trainer.strategy.root_device
        pl_module.log("tokens_per_s", tokens / max(w[2], 1e-9), prog_bar=True)
        pl_module.log("trained_tokens", float(self.trained_tokens))
        pl_module.log("peak_mem_mib", peak_memory_mib(device))
        self._window = [0, 0, 0.0]
