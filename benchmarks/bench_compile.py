#!/usr/bin/env python
"""``model.compile: true`` on this machine: our LoRA training step eager and with every transformer block
through ``torch.compile`` (inductor), beside HF transformers + peft eager, on bench_lora's uniform
configuration (SmolLM2-135M, LoRA r16 on all 7 kinds, batch 4 x 256, fp32), in one run.

    python benchmarks/bench_compile.py [--steps 6] [--threads 2]

The first compiled step pays the compilation; it is reported apart. The compiled model's first-step loss
must equal the eager one's (same weights, same batch). Writes ``benchmarks/results_compile.md``.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (HERE, CpuMeter, Trainer, add_lora_hf, add_lora_ours, background_notes, bullets,  # noqa: E402
                               hf_twin, load_ours, loss_hf, loss_ours, machine_info, make_batches, md_table, med,
                               spread, write_text)


def step_times(trainer: Trainer, steps: int) -> list[float]:
    return [trainer.step() for _ in range(steps)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 2 warmup steps)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    # an empty compile cache, so the first compiled step is what a fresh machine pays (not a cache hit)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache = tempfile.mkdtemp(prefix="bench_compile_inductor_")
    atexit.register(shutil.rmtree, cache, True)
    torch.set_num_threads(args.threads)
    from nemo_peft.models.compile import compile_blocks
    meter = CpuMeter()
    base = load_ours()
    batches = make_batches(2, 4, 256, base.config.vocab_size)
    hf = add_lora_hf(hf_twin(base))
    ours = add_lora_ours(base)
    print("[1/3] eager: ours and HF+peft", flush=True)
    first, times, faults = {}, {}, {}
    for name, model, loss in (("ours eager", ours, loss_ours), ("HF+peft eager", hf, loss_hf)):
        trainer = Trainer(model, loss, batches)
        step_times(trainer, 2)
        times[name] = step_times(trainer, args.steps)
        first[name], faults[name] = trainer.losses[0], trainer.fault_note()
        del trainer
    del hf
    print("[2/3] ours with model.compile (the first step compiles)", flush=True)
    compiled = add_lora_ours(load_ours())
    compile_blocks(compiled)
    trainer = Trainer(compiled, loss_ours, batches)
    compile_s = trainer.step()  # forward and backward graphs compile here
    first["ours compiled"] = trainer.losses[0]
    step_times(trainer, 1)
    print("[3/3] ours compiled, timed", flush=True)
    times["ours compiled"] = step_times(trainer, args.steps)
    faults["ours compiled"] = trainer.fault_note()
    tokens = 4 * 256
    hf_s = med(times["HF+peft eager"])
    rows = [(name, f"{med(t):.3f} {spread(t)}", f"{tokens / med(t):.0f}", f"{hf_s / med(t):.2f}x")
            for name, t in times.items()]
    notes = [f"Machine: {machine_info(args)}",
             f"Settings: bench_lora's uniform step (LoRA r16 on q, k, v, o, gate, up, down; AdamW; batch 4 x 256; "
             f"fp32), 2 warmup + {args.steps} timed steps per variant; compiled: every transformer block through "
             f"torch.compile (nemo_peft.models.compile.compile_blocks, what model.compile=true does)",
             f"first compiled step (compiling forward and backward, empty compile cache): {compile_s:.1f} s",
             "first-step loss (same weights, same batch): " + ", ".join(f"{k} {v:.5f}" for k, v in first.items()),
             "page faults (fresh memory, faulted in and zeroed by the kernel; its cost on these VMs varies over time): "
             + "; ".join(f"{k} {v}" for k, v in faults.items()),
             *background_notes(meter)]
    text = ("# torch.compile on CPU: our LoRA training step eager vs compiled, HF+peft eager as the peer\n\n"
            + md_table(("variant", "step s (median [min–max])", "tokens/s", "vs HF+peft eager"), rows)
            + "\n\n" + bullets(notes))
    write_text(os.path.join(HERE, "results_compile.md"), text)


if __name__ == "__main__":
    main()
