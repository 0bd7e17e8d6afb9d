"""Measure a few real training steps (and evaluation batches) of a module, then put it back as it was.

What the pre-flight estimate (``estimate.py``) builds on: a probe runs the module through a throwaway
``lightning.Trainer`` with the run's own trainer options (precision, accumulation, gradient clipping,
threads) on given micro-batches, and reports the time of each optimizer step and of each evaluation
batch, the peak memory (CPU resident set size, or CUDA memory allocated), and the size of a checkpoint.
The module's trainable weights, training modes and random number generators are restored afterwards,
so a run that starts after a probe is the run it would have been without one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import statistics
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, open_dict

from nemo_peft.recipes.build import build_trainer

PROC_STATUS = "/proc/self/status"


# ---- CPU memory, from the kernel (Linux) ----
def proc_mib(key: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process in MiB; None off Linux."""
    try:
        with open(PROC_STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process to its current RSS ("5" to clear_refs).
    This also resets what ``resource.getrusage`` reports as the peak, so only a process that is
    about to exit (``+estimate_only=true``) should do it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak memory over a ``with`` block, in MiB, and where it was measured from.

    CUDA: ``torch.cuda.max_memory_allocated`` (what ThroughputMonitor reports). CPU: the kernel's
    high-water mark, reset at entry when ``reset`` allows it; without a reset the mark only tells
    something if it rose inside the block, so a thread samples the RSS every 2 ms instead.
    """

    def __init__(self, device: torch.device, reset: bool = False):
        self.device, self.reset = device, reset
        self.start = self.peak = None
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        self.start = proc_mib("VmRSS")
        self.reset = self.reset and reset_peak_rss()
        self._hwm0 = proc_mib("VmHWM")
        if self.start is not None and not self.reset:  # with a reset, the kernel's mark is exact: no sampling
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._samples.append(proc_mib("VmRSS") or 0.0)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            return False
        if self.start is None:
            return False
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        hwm = proc_mib("VmHWM")
        sampled = max([self.start, *self._samples])
        self.peak = hwm if (self.reset or hwm > self._hwm0) else sampled
        return False


# ---- timing ----
class StepClock(L.Callback):
    """Seconds of each optimizer step (its micro-batches: forward, backward, optimizer) and of each test
    batch. With ``budget_s``, fit stops once ``min_steps`` steps after ``warmup`` have been timed and they
    took ``budget_s`` seconds together: slow models are probed for a few steps, fast ones for more."""

    def __init__(self, warmup: int = 1, min_steps: int = 3, budget_s: float | None = None):
        self.warmup, self.min_steps, self.budget_s = warmup, min_steps, budget_s
        self.steps: dict[int, float] = {}
        self.test_batches: list[float] = []

    def _sync(self, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._sync(pl_module)
        self._step, self._t0 = trainer.global_step, time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sync(pl_module)
        self.steps[self._step] = self.steps.get(self._step, 0.0) + time.perf_counter() - self._t0
        timed = [t for s, t in sorted(self.steps.items())][self.warmup:]
        if trainer.global_step > self._step and self.budget_s is not None and len(timed) >= self.min_steps \
                and sum(timed) >= self.budget_s:
            trainer.should_stop = True  # a step just ended: enough measured

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._sync(pl_module)
        self._t0 = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._sync(pl_module)
        self.test_batches.append(time.perf_counter() - self._t0)


class Batches:
    """Ready micro-batches as one iterable for ``trainer.fit`` / ``trainer.test`` (a list would be read
    as a collection of loaders)."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


# ---- a throwaway copy of the state ----
@contextlib.contextmanager
def throwaway_state(module):
    """Run the block, then restore ``module``'s trainable weights (and their gradients), the training mode of
    each submodule, its trainer and loss counters, and the torch / numpy / random generators."""
    params = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    modes = [(m, m.training) for m in module.modules()]
    counters = {k: v.clone() for k, v in vars(module).items() if k in ("_window", "_eval") and torch.is_tensor(v)}
    flags = {k: v for k, v in vars(module).items() if k in ("_warned_magnitude", "_resync_lr")}
    trainer = module._trainer
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in module.named_parameters():
                if n in params:
                    p.copy_(params[n].to(p.device))
                    p.grad = grads[n]
        for m, mode in modes:
            m.training = mode
        for m, mode in modes:  # again through train(): modules that keep caches per mode (p-tuning) hear of it
            if type(m).train is not torch.nn.Module.train:
                m.train(mode)
        vars(module).update(counters)
        vars(module).update(flags)
        module._trainer = trainer
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])


# ---- the probe ----
PROBE_TRAINER = {"max_epochs": -1, "limit_train_batches": 1.0, "limit_val_batches": 0, "limit_test_batches": 1.0,
                 "val_check_interval": None, "check_val_every_n_epoch": None, "num_sanity_val_steps": 0,
                 "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                 "logger": False, "log_every_n_steps": 1, "devices": 1, "num_nodes": 1, "strategy": "auto"}


@dataclass
class ProbeResult:
    step_seconds: list[float]  # the timed optimizer steps (warmup excluded)
    warmup_seconds: list[float]
    test_batch_seconds: list[float]
    device: str
    memory_start_mib: float | None  # CPU RSS / CUDA allocated when the probe started
    memory_peak_mib: float | None  # the peak while evaluating and training
    rss_reset: bool  # the CPU peak is the kernel's exact mark since the probe started
    checkpoint_bytes: int
    checkpoint_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def step_s(self) -> float:
        """The median timed step (the warmup steps' when none was timed): a step slowed down by another
        process on a shared machine does not move it."""
        return statistics.median(self.step_seconds or self.warmup_seconds or [0.0])

    @property
    def eval_batch_s(self) -> tuple[float, float]:
        """(seconds of a warm evaluation batch, the extra seconds of the first one), 0 without test batches."""
        if not self.test_batch_seconds:
            return 0.0, 0.0
        warm = min(self.test_batch_seconds)
        return warm, self.test_batch_seconds[0] - warm


def probe_trainer_cfg(trainer_cfg: DictConfig, steps: int) -> DictConfig:
    """The run's trainer section for a single-process probe of ``steps`` optimizer steps."""
    cfg = trainer_cfg.copy()
    with open_dict(cfg):
        for key, value in {**PROBE_TRAINER, "max_steps": steps}.items():
            cfg[key] = value
    return cfg


@contextlib.contextmanager
def _quiet():
    """Lightning's start-up lines and the warnings a 3-step fit provokes are not the run's."""
    names = ["lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def run_probe(module, trainer_cfg: DictConfig, train_batches: list[dict], accumulate: int, warmup_steps: int = 1,
              test_batches: list[dict] | None = None, reset_peak: bool = False, min_steps: int = 3,
              budget_s: float | None = 3.0) -> ProbeResult:
    """Test on ``test_batches`` (timed), then train on ``train_batches`` (``accumulate`` micro-batches per
    optimizer step; the first ``warmup_steps`` steps untimed; after ``min_steps`` timed steps, stop once
    they took ``budget_s``) and write one checkpoint, in a throwaway trainer whose directory is a temporary
    one. ``module`` is restored afterwards."""
    steps = len(train_batches) // accumulate
    if steps < 1:
        raise ValueError(f"The probe needs at least {accumulate} micro-batch(es); got {len(train_batches)}.")
    clock = StepClock(warmup_steps, min_steps, budget_s)
    with throwaway_state(module), _quiet(), tempfile.TemporaryDirectory(prefix="nemo_peft_probe_") as tmp:
        trainer = build_trainer(probe_trainer_cfg(trainer_cfg, steps), tmp, None, callbacks=[clock])
        device = trainer.strategy.root_device
        with PeakMemory(device, reset=reset_peak) as memory:  # a run evaluates (generates) too: count it
            if test_batches:
                trainer.test(module, dataloaders=Batches(test_batches), verbose=False)
            trainer.fit(module, train_dataloaders=Batches(train_batches[:steps * accumulate]))
        ckpt = os.path.join(tmp, "probe.ckpt")
        t0 = time.perf_counter()
        trainer.save_checkpoint(ckpt)
        ckpt_seconds = time.perf_counter() - t0
        ckpt_bytes = os.path.getsize(ckpt)
        del trainer
    timed = [clock.steps[s] for s in sorted(clock.steps)]
    return ProbeResult(step_seconds=timed[warmup_steps:], warmup_seconds=timed[:warmup_steps],
                       test_batch_seconds=clock.test_batches, device=str(device), memory_start_mib=memory.start,
                       memory_peak_mib=memory.peak, rss_reset=memory.reset, checkpoint_bytes=ckpt_bytes,
                       checkpoint_seconds=ckpt_seconds)
