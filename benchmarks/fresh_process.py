"""bench_lora's measurements that run in a fresh subprocess per side and run, sides alternating:
the training step's peak RSS, and the training step's time.

Why a fresh process: both depend on the state of glibc's heap, which everything run before in the
same process leaves behind. In one long benchmark process the same HF+peft step faulted in 222,789
fresh pages a step (1.9 s of kernel CPU) in one run and none in the next, after other rows had
grown the heap: a 20% swing of the peer's step that has nothing to do with either library. A fresh
process per run measures each side as a user's training job runs it.

The child is bench_lora.py itself with ``--child ours|hf`` (and ``--child-task``); it prints one
``RESULT {json}`` line.
"""
from __future__ import annotations

import ctypes, dataclasses, gc, json, os, subprocess, sys

import torch

from benchmarks.common import (Trainer, add_lora_hf, add_lora_ours, load_hf, load_ours, loss_hf, loss_ours,
                               make_batches, proc_kb)
from benchmarks.time_split import Split, profile_split

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_lora.py")


def _trainer(args, batches_n: int) -> Trainer:
    torch.set_num_threads(args.threads)
    ours = args.child == "ours"
    model = add_lora_ours(load_ours()) if ours else add_lora_hf(load_hf())
    if args.recompute:  # activation checkpointing, each side its own way
        if ours:
            model.set_activation_checkpointing(True)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batches = make_batches(batches_n, args.batch, args.seq, model.config.vocab_size)
    return Trainer(model, loss_ours if ours else loss_hf, batches, "cpu" if args.bf16 else None)


def memory_child(args) -> dict:
    """Peak RSS of the training loop alone: reset the kernel's high-water mark after setup."""
    tr = _trainer(args, 2)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed loader buffers back so they are not reused silently
    base = proc_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (peak RSS) to the current RSS
        f.write("5")
    for _ in range(2):  # step 1 creates AdamW state; step 2 runs backward with that state alive
        tr.step()
    peak = proc_kb("VmHWM")
    return {"base_mib": base / 1024, "peak_mib": peak / 1024, "increase_mib": (peak - base) / 1024}


def train_child(args) -> dict:
    """``args.warmup`` untimed steps, ``args.child_steps`` timed ones, then one profiled step."""
    tr = _trainer(args, args.warmup + args.child_steps)
    times = [tr.step() for _ in range(args.warmup + args.child_steps)][args.warmup:]
    title = args.profile and f"profile of one training step: {'nemo_peft' if args.child == 'ours' else 'HF+peft'}"
    split = profile_split(tr.step, title)
    n = args.warmup
    return {"times": times, "faults": tr.faults[n:n + len(times)], "sys_s": tr.sys_s[n:n + len(times)],
            "first_loss": tr.losses[0], "split": dataclasses.asdict(split)}


def child_main(args) -> None:
    out = (train_child if args.child_task == "train" else memory_child)(args)
    print("RESULT " + json.dumps(out), flush=True)


def run_child(side: str, args, task: str, recompute: bool = False, steps: int = 0) -> dict:
    cmd = [sys.executable, BENCH, "--child", side, "--child-task", task, "--seq", str(args.seq),
           "--batch", str(args.batch), "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--child-steps", str(steps)] + ["--bf16"] * args.bf16 + ["--recompute"] * recompute \
        + ["--profile"] * (args.profile and task == "train")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if args.profile:
        print(out.stdout[:out.stdout.find("RESULT ")], flush=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{task} child {side} failed:\n{out.stderr[-3000:]}")


def memory_runs(args, recompute: bool) -> dict:
    """Each side's peak-RSS figures over ``args.mem_reps`` fresh subprocesses, sides alternating: a run's
    peak depends on how glibc happened to reuse freed blocks (the same step measured 620 to 940 MiB of
    increase on one machine), so one run is not a measurement."""
    runs = {"ours": {}, "hf": {}}
    for _ in range(args.mem_reps):
        for side in runs:
            for k, v in run_child(side, args, "memory", recompute).items():
                runs[side].setdefault(k, []).append(v)
    return runs


def train_runs(args) -> dict:
    """Each side's step times over ``args.train_procs`` fresh subprocesses (ours hf, hf ours, ...),
    ``args.steps_per_proc`` timed steps each; with the page faults and kernel CPU of each step, the
    first-step loss, and the last child's profiled step (a ``Split``)."""
    runs = {"ours": {"times": [], "faults": [], "sys_s": []}, "hf": {"times": [], "faults": [], "sys_s": []}}
    for i in range(args.train_procs):
        for side in ("ours", "hf") if i % 2 == 0 else ("hf", "ours"):
            got = run_child(side, args, "train", steps=args.steps_per_proc)
            for k in ("times", "faults", "sys_s"):
                runs[side][k] += got[k]
            runs[side]["first_loss"] = got["first_loss"]
            runs[side]["split"] = Split(**got["split"])
    return runs
