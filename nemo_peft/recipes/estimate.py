"""The pre-flight estimate of a fine-tuning run: ``nemo-peft finetune ... +estimate_only=true``
(or ``nemo-peft estimate ...``) prints it and exits; ``finetune.py`` prints it in its banner
(``estimate=false`` turns that off).

Trainable parameters and the adapter's size on disk are exact (the adapter is saved to a temporary
directory). Peak memory and time per step come from a probe (``probe.py``): a few real optimizer steps
with the run's trainer options on the run's longest micro-batches (among the first ones it will see),
in a throwaway copy of the state. The whole run is arithmetic on top: steps x step time (scaled from
the probed micro-batches to the sampled average), evaluation passes x batches x a probed batch time,
checkpoint writes x a probed write, and the time it took to load the model.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field

from omegaconf import DictConfig

from nemo_peft.recipes.build import build_data, build_model, check_section_keys, to_dict
from nemo_peft.recipes.run_config import EXP_MANAGER_KEYS, ROOT_KEYS, batch_arithmetic
from nemo_peft.recipes.probe import ProbeResult, proc_mib, run_probe
from nemo_peft.recipes.strategies import data_parallel_size

SAMPLE_BATCHES = 16  # micro-batches read from the start of the train order to choose the probe's and average


@dataclass
class Estimate:
    trainable: int
    total: int
    adapter_bytes: int
    checkpoint_bytes: int
    checkpoint_writes: int
    device: str
    precision: str
    loaded_mib: float | None  # CPU RSS with the model loaded (before training)
    peak_mib: float | None  # predicted peak: the process's CPU RSS, or CUDA memory allocated
    step_s: float
    steps: int | None
    global_batch: int
    tokens_per_step: float
    micro_batch: tuple[int, int]  # (rows, tokens per row) of the probed micro-batches
    train_s: float | None
    eval_s: float
    eval_what: str
    checkpoint_s: float
    startup_s: float | None
    banner_s: float = 0.0  # this estimate's own time, spent again by the run's banner (root key estimate: true)
    probe: ProbeResult | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def increase_mib(self) -> float | None:
        if self.peak_mib is None or self.loaded_mib is None:
            return None
        return self.peak_mib - self.loaded_mib

    @property
    def total_s(self) -> float | None:
        if self.train_s is None:
            return None
        return self.train_s + self.eval_s + self.checkpoint_s + (self.startup_s or 0.0) + self.banner_s

    def lines(self) -> list[str]:
        p = self.probe
        probed = (f"{len(p.warmup_seconds)} warmup + {len(p.step_seconds)} timed optimizer step(s) on micro-batches "
                  f"of {self.micro_batch[0]} x {self.micro_batch[1]} tokens") if p else "no probe"
        share = 100 * self.trainable / max(1, self.total)
        out = [f"pre-flight estimate ({probed}; {self.device}, precision {self.precision})",
               f"  trainable parameters  {self.trainable:,} of {self.total:,} ({share:.2f}%)",
               f"  adapter on disk       {_mb(self.adapter_bytes)}; a checkpoint {_mb(self.checkpoint_bytes)}"
               + (f" (written {self.checkpoint_writes}x)" if self.checkpoint_writes else " (none written)")]
        if self.peak_mib is None:
            out.append("  peak memory           n/a (no /proc on this system)")
        elif self.device.startswith("cuda"):
            out.append(f"  peak memory           GPU {self.peak_mib:,.0f} MiB allocated (torch.cuda.max_memory_allocated; "
                       "the CUDA context and the allocator's cache come on top)")
        else:
            out.append(f"  peak memory           CPU RSS {self.peak_mib:,.0f} MiB: the loaded model {self.loaded_mib:,.0f} "
                       f"MiB + {self.increase_mib:,.0f} MiB for training and evaluation")
        out.append(f"  time per step         {_secs(self.step_s)} (global batch {self.global_batch}, about "
                   f"{self.tokens_per_step:,.0f} tokens: {self.tokens_per_step / max(self.step_s, 1e-9):,.0f} tokens/s)")
        if self.train_s is None:
            out.append("  whole run             unbounded (trainer.max_steps=-1 and trainer.max_epochs=-1)")
        else:
            parts = [f"{self.steps} steps x {_secs(self.step_s)} = {_secs(self.train_s)}", f"evaluation {self.eval_what}"]
            if self.checkpoint_writes:
                parts.append(f"checkpoints {_secs(self.checkpoint_s)}")
            if self.startup_s is not None:
                parts.append(f"loading {_secs(self.startup_s)}")
            if self.banner_s:
                parts.append(f"the banner's estimate {_secs(self.banner_s)} (estimate=false skips it)")
            out.append(f"  whole run             about {_secs(self.total_s)}: {', '.join(parts)}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _secs(s: float) -> str:
    if s < 1:
        return f"{1000 * s:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _tokens(batch: dict) -> int:
    """Token positions a micro-batch feeds the model (encoder + decoder for encoder-decoder batches)."""
    return sum(int(batch[k].numel()) for k in ("input_ids", "decoder_input_ids") if k in batch)


def _first(loader, n: int) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) >= n:
            break
    return out


def total_steps(trainer_cfg: DictConfig, epoch_batches: int, accumulate: int) -> int | None:
    steps = int(trainer_cfg.get("max_steps", -1) or -1)
    epochs = int(trainer_cfg.get("max_epochs", -1) or -1)
    by_epochs = epochs * math.ceil(epoch_batches / accumulate) if epochs > 0 else None
    if steps > 0:
        return min(steps, by_epochs) if by_epochs else steps
    return by_epochs


def validation_passes(trainer_cfg: DictConfig, steps: int, epoch_batches: int, accumulate: int) -> int:
    """How often fit validates (Lightning's val_check_interval / check_val_every_n_epoch), roughly."""
    if trainer_cfg.get("limit_val_batches", 1.0) in (0, 0.0):
        return 0
    batches = steps * accumulate
    interval, every = trainer_cfg.get("val_check_interval"), trainer_cfg.get("check_val_every_n_epoch")
    if isinstance(interval, int) and interval > 0:
        return batches // interval if every is None else (batches // epoch_batches // every) * (epoch_batches // interval)
    per_epoch = max(1, round(1 / float(interval or 1.0)))
    return (batches // max(1, epoch_batches)) // int(every or 1) * per_epoch


def _limit(value, n: int) -> int:
    if value is None:
        return n
    return min(n, int(value)) if isinstance(value, int) or float(value) > 1 else int(n * float(value))


def estimate_finetune(cfg: DictConfig, module=None, *, reset_peak: bool = False, warmup_steps: int = 2,
                      min_steps: int = 3, max_steps: int = 10, budget_s: float = 3.0) -> Estimate:
    """Estimate the fine-tuning run ``cfg`` describes (the finetune config), without touching its output
    directory. ``module``: the run's model, already built (``build_model(cfg.model)``; it is restored after
    the probe); None builds one and times the loading. ``reset_peak`` resets the process's peak-RSS mark for an
    exact CPU peak: only for a process that exits afterwards (it also resets what ``getrusage`` reports).
    The probe times ``min_steps`` to ``max_steps`` optimizer steps after ``warmup_steps``, stopping once the
    timed ones took ``budget_s`` seconds; a step's time is their median."""
    check_section_keys(cfg, ROOT_KEYS, "the finetune config")
    check_section_keys(cfg.exp_manager, EXP_MANAGER_KEYS, "exp_manager")
    startup = None
    if module is None:
        start = time.perf_counter()
        module = build_model(cfg.model)
        startup = time.perf_counter() - start
    if not module.model.adapter_names:
        raise ValueError("model.peft.peft_scheme is empty, so there is no adapter to train and nothing to estimate; "
                         "set it to a method (e.g. model.peft.peft_scheme=lora).")
    loaded, load_peak = proc_mib("VmRSS"), proc_mib("VmHWM")
    estimate_start = time.perf_counter()
    trainer_cfg, _ = batch_arithmetic(cfg)
    kwargs = to_dict(trainer_cfg)
    accumulate, processes = int(trainer_cfg.accumulate_grad_batches), data_parallel_size(kwargs)
    data = build_data(cfg.data, module.tokenizer, module.model)
    module.add_stop_token_ids(data.stop_token_ids())
    train = data.train_dataloader()
    epoch_batches = math.ceil(len(train) / processes)
    needed = (warmup_steps + max_steps) * accumulate
    sample = _first(train, max(SAMPLE_BATCHES, needed))
    if len(sample) < needed:  # a tiny data set: go round it again
        sample = (sample * math.ceil(needed / len(sample)))[:max(needed, len(sample))]
    longest = sorted(sample, key=_tokens, reverse=True)[:needed]
    eval_split = "test" if module.eval_exact_match and data.configs["test"] is not None else None
    eval_batches = _first(data.test_dataloader(), 2) if eval_split else []
    if data.configs["validation"] is not None and not eval_batches and kwargs.get("limit_val_batches", 1.0):
        eval_split, eval_batches = "validation", _first(data._loader("validation"), 2)
    probe = run_probe(module, trainer_cfg, longest, accumulate, warmup_steps, eval_batches, reset_peak, min_steps,
                      budget_s)

    notes = []
    used = longest[warmup_steps * accumulate:(warmup_steps + len(probe.step_seconds)) * accumulate] or longest
    scale = (sum(map(_tokens, sample)) / len(sample)) / (sum(map(_tokens, used)) / len(used))
    step_s = probe.step_s * scale
    steps = total_steps(trainer_cfg, epoch_batches, accumulate)
    eval_s, eval_what = _evaluation(cfg, trainer_cfg, data, probe, eval_split, steps, epoch_batches, accumulate)
    writes, ckpt_s = _checkpoints(cfg, steps, probe)
    with tempfile.TemporaryDirectory(prefix="nemo_peft_estimate_") as tmp:
        saved = os.path.join(tmp, "adapter")
        module.save_adapters(saved)
        adapter_bytes = sum(os.path.getsize(os.path.join(saved, f)) for f in os.listdir(saved))
    if probe.device.startswith("cuda"):
        loaded, peak = None, probe.memory_peak_mib
    elif probe.memory_peak_mib is not None:
        peak = max(load_peak or 0.0, probe.memory_peak_mib)
    else:
        peak = None
    if processes > 1:
        notes.append(f"measured in one process; this run has {processes} data-parallel processes, each needing about "
                     "this memory (less under trainer.strategy=fsdp), and each step adds the gradient all-reduce")
    if abs(scale - 1) > 0.05:
        notes.append(f"the probe ran the longest of the first {len(sample)} micro-batches; time per step is scaled by "
                     f"{scale:.2f} to their average length, peak memory is the longest's")
    rows, length = longest[0]["input_ids"].shape
    trainable = module.model.num_trainable_parameters()
    total = sum(p.numel() for p in module.model.parameters())
    micro_tokens = sum(map(_tokens, sample)) / len(sample)
    # a fresh run (one process) prints this estimate in its banner, so it spends this time again
    banner_s = time.perf_counter() - estimate_start if cfg.get("estimate", True) and processes == 1 else 0.0
    return Estimate(trainable=trainable, total=total, adapter_bytes=adapter_bytes,
                    checkpoint_bytes=probe.checkpoint_bytes, checkpoint_writes=writes, device=probe.device,
                    precision=str(trainer_cfg.get("precision", "32-true")), loaded_mib=loaded, peak_mib=peak,
                    step_s=step_s, steps=steps, global_batch=int(rows) * accumulate * processes,
                    tokens_per_step=micro_tokens * accumulate, micro_batch=(int(rows), int(length)),
                    train_s=None if steps is None else steps * step_s, eval_s=eval_s, eval_what=eval_what,
                    checkpoint_s=ckpt_s, startup_s=startup, banner_s=banner_s, probe=probe, notes=notes)


def _evaluation(cfg, trainer_cfg, data, probe: ProbeResult, split, steps, epoch_batches, accumulate):
    """(seconds, what) of the run's evaluation: held-out exact match before/after (the test split) and
    validation inside fit, each pass's batches at the probed batch time."""
    warm, first_extra = probe.eval_batch_s
    if not split or not warm:
        return 0.0, "none"
    micro = int(data.configs[split]["micro_batch_size"])
    passes = []  # (label, number of passes, batches per pass, seconds per batch)
    if data.configs["test"] is not None and split == "test":
        n = len(data.test_dataloader())
        passes.append(("held-out test", 1 + bool(cfg.get("eval_before", True)), n, warm))
    val = data.configs["validation"]
    if val is not None and steps:
        count = validation_passes(trainer_cfg, steps, epoch_batches, accumulate)
        if count:
            n = _limit(trainer_cfg.get("limit_val_batches"), len(data._loader("validation")))
            passes.append(("validation", count, n, warm * int(val["micro_batch_size"]) / micro))
    seconds = sum(c * n * t for _, c, n, t in passes) + (max(0.0, first_extra) if passes else 0.0)
    what = " + ".join(f"{c} {label} pass(es) x {n} batches" for label, c, n, _ in passes) or "none"
    return seconds, f"{what} = {_secs(seconds)}"


def _checkpoints(cfg, steps, probe: ProbeResult) -> tuple[int, float]:
    ckpt = cfg.exp_manager.get("checkpoint")
    if ckpt is None or not cfg.trainer.get("enable_checkpointing", True) or not steps:
        return 0, 0.0
    every = int(ckpt.get("every_n_train_steps") or 0)
    writes = (steps // every if every else 1) + bool(ckpt.get("save_last")) * (not every or steps % every != 0)
    return writes, writes * probe.checkpoint_seconds


def run_estimate(cfg: DictConfig) -> Estimate:
    """``+estimate_only=true``: print the estimate; nothing is trained and the output directory is left alone."""
    est = estimate_finetune(cfg, reset_peak=True)
    print("\n".join(est.lines()))
    print(f"estimate only: nothing was trained and {cfg.exp_manager.output_dir} was not touched.")
    return est
