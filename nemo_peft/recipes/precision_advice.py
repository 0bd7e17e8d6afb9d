"""Is bf16 worth it on this CPU? A short matmul probe at the model's own shape, fp32 against bf16.

CPUs without bf16 units (AVX2 machines, AVX-512 without the BF16 extension) emulate bf16 matmuls, which
can run several times slower than fp32: ``trainer.precision=bf16-mixed`` then makes training slower, not
faster. The probe measures it on this machine (well under a second) and ``advice`` says so in one line.
"""
from __future__ import annotations

import time

import torch

BF16 = ("bf16-mixed", "bf16-true", "bf16")
BUDGET_S = 0.05  # per kernel and dtype, after one warm-up call
MAX_ROWS = 32
MAX_DIM = 2048  # a larger Linear is probed at this size: the ratio is per flop, the time must stay short
MAX_MACS = 6e7  # fewer rows for a large Linear: an emulated bf16 matmul of this size takes ~0.1 s


def largest_linear(model: torch.nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of the model's biggest Linear weight: the shape most of its time goes to."""
    shapes = [tuple(m.weight.shape) for m in model.modules()
              if isinstance(m, torch.nn.Linear) and m.weight.dim() == 2 and m.weight.dtype.is_floating_point]
    if not shapes:
        return None
    out_features, in_features = max(shapes, key=lambda s: s[0] * s[1])
    return in_features, out_features


def _fastest(fn) -> float:
    """The fastest of a few timed calls after one untimed warm-up (kernel choice, one-time JIT, allocator):
    the least disturbed by other work on the machine."""
    fn()
    times: list[float] = []
    while sum(times) < BUDGET_S and len(times) < 50:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _seconds_per_step(rows: int, probe_rows: int, k: int, n: int, dtype: torch.dtype, cast: bool) -> float:
    """One frozen Linear's share of a training step on ``rows`` rows: forward ``x @ W.T`` and backward to the
    input ``g @ W`` (CPU kernels differ between the two layouts), timed on ``probe_rows`` rows and scaled;
    with ``cast``, plus the fp32 -> bf16 copy of the weight that autocast (bf16-mixed) makes at every forward
    (it caches casts of trainable leaves only, not of a frozen base)."""
    g = torch.Generator().manual_seed(0)
    x, w, grad = (torch.randn(*shape, generator=g).to(dtype) for shape in ((probe_rows, k), (n, k), (probe_rows, n)))
    matmuls = _fastest(lambda: torch.nn.functional.linear(x, w)) + _fastest(lambda: grad @ w)
    seconds = matmuls * rows / probe_rows
    if cast:
        w32 = w.float()
        seconds += _fastest(lambda: w32.to(dtype))
    return seconds


def bf16_speed_ratio(model: torch.nn.Module, rows: int, mixed: bool = True) -> float | None:
    """fp32 time / bf16 time of the forward and backward matmuls of the model's largest Linear on micro-batches
    of ``rows`` tokens (> 1: bf16 is faster); ``mixed``: bf16-mixed, which also casts the weight every step."""
    shape = largest_linear(model)
    if shape is None:
        return None
    shape = tuple(min(d, MAX_DIM) for d in shape)
    probe_rows = max(1, min(rows, MAX_ROWS, int(MAX_MACS // (shape[0] * shape[1]))))
    fp32 = _seconds_per_step(rows, probe_rows, *shape, torch.float32, cast=False)
    bf16 = _seconds_per_step(rows, probe_rows, *shape, torch.bfloat16, cast=mixed)
    return fp32 / bf16


def advice(precision, accelerator, model: torch.nn.Module, rows: int) -> str | None:
    """One line when ``precision`` asks for bf16 on a CPU where bf16 matmuls are slower than fp32, else None."""
    accelerator = str(accelerator or "cpu")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if str(precision) not in BF16 or not on_cpu:
        return None
    ratio = bf16_speed_ratio(model, rows, mixed=str(precision) == "bf16-mixed")
    if ratio is None or ratio >= 0.9:
        return None
    return (f"bf16 matmuls run {ratio:.2g}x the speed of fp32 on this CPU ({_units()}; measured at this model's "
            f"largest matmul): training will be slower than fp32; use trainer.precision=32")


def for_run(trainer_cfg, data_cfg, model: torch.nn.Module) -> str | None:
    """``advice`` for a fine-tune: the trainer section's precision and accelerator, micro-batches of
    data.train_ds's micro_batch_size x max_seq_length tokens."""
    train = data_cfg.get("train_ds") or {}
    rows = int(train.get("micro_batch_size", 4)) * int(train.get("max_seq_length", 32))
    return advice(trainer_cfg.get("precision"), trainer_cfg.get("accelerator"), model, rows)


def _units() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if flags and not {"avx512_bf16", "amx_bf16"} & set(flags):
        return "no AVX-512 bf16 or AMX units"
    return f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
