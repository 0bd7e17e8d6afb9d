"""This machine's limits, measured in the benchmark's own run, and the exact work of the benchmark.

- ``train_matmuls(cfg, ...)``: every matmul of one LoRA training step, from the model config and the
  LoRA config (``Mm`` records: shape, operand layout, how many): forward + input-gradient backward of
  every frozen linear (none for layer 0's q/k/v: the embedding is frozen), the LoRA matmuls
  (forward; dB, dh, dA, dx), causal attention (QK^T and PV forward, twice that backward, causal = half),
  the LM head forward + input-gradient backward on the labelled positions.
- ``measure_peaks(mms, dtype)``: GFLOP/s of each distinct shape, best of several runs after warmup;
  ``roofline_seconds`` = sum over matmuls of flops / that shape's peak.
- ``copy_bandwidth`` (large copy, read + write bytes) and ``gemv_bandwidth`` (fp32 matrix x vector,
  bytes read), in GB/s.
- ``decode_bytes`` (weights read per token in batch-1 decode) and ``merge_floor_seconds`` (B·A at
  the matmul peak + one read and one write of every merged weight at copy bandwidth).
- ``measure_limits`` does all of it for one configuration; ``Limits.absorb`` keeps the best of two
  passes (a burst of background load during one pass then does not lower the yardstick).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# target -> (input, output) of its projection, as functions of the config
_IN_OUT = {
    "q_proj": lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim),
    "k_proj": lambda c: (c.hidden_size, c.num_query_groups * c.head_dim),
    "v_proj": lambda c: (c.hidden_size, c.num_query_groups * c.head_dim),
    "o_proj": lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size),
    "gate_proj": lambda c: (c.hidden_size, c.ffn_hidden_size),
    "up_proj": lambda c: (c.hidden_size, c.ffn_hidden_size),
    "down_proj": lambda c: (c.ffn_hidden_size, c.hidden_size),
}
QKV = ("q_proj", "k_proj", "v_proj")


@dataclass(frozen=True)
class Mm:
    """``count`` products [m, k] x [k, n] (2mkn FLOPs each; ``batch`` of them for a bmm). ``layout``:
    "nt" = x @ W.T (a linear's forward), "nn" = dy @ W (input gradient), "tn" = dy.T @ x (weight
    gradient), "bmm" = batched (attention). ``count`` may be fractional (causal halves, LM-head chunks)."""

    group: str  # frozen | lora | attention | lm_head
    name: str
    m: int
    k: int
    n: int
    count: float = 1.0
    layout: str = "nt"
    batch: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.m * self.k * self.n * self.batch * self.count

    @property
    def key(self) -> tuple:
        return self.layout, self.batch, self.m, self.k, self.n

    def label(self) -> str:
        b = f"{self.batch}x" if self.batch > 1 else ""
        return f"{b}[{self.m},{self.k}]x[{self.k},{self.n}] {self.layout}"


def linear_shapes(cfg) -> dict[str, tuple[int, int]]:
    """Our frozen linears per layer: name -> (in, out) (q/k/v and gate/up fused, as GPTModel has them)."""
    q, kv, f = cfg.num_attention_heads * cfg.head_dim, cfg.num_query_groups * cfg.head_dim, cfg.ffn_hidden_size
    fc1 = 2 * f if cfg.gated_linear_unit else f
    return {"linear_qkv": (cfg.hidden_size, q + 2 * kv), "linear_proj": (q, cfg.hidden_size),
            "linear_fc1": (cfg.hidden_size, fc1), "linear_fc2": (f, cfg.hidden_size)}


def lm_head_chunk(cfg, rows: int, device: str = "cpu") -> tuple[int, int]:
    """(rows per block, vocabulary entries per chunk) of our chunked loss on a frozen head (its default on
    ``device``)."""
    from nemo_peft.modules.chunked_loss import default_chunk_elements, vocab_chunk
    return vocab_chunk(rows, cfg.vocab_size, default_chunk_elements(device))


def train_matmuls(cfg, batch: int, seq: int, rank: int, targets, label_rows: int | None = None,
                  lm_chunk: tuple[int, int] | None = None) -> list[Mm]:
    """Every matmul of one LoRA training step (frozen base and embedding, LoRA on ``targets``).

    ``label_rows``: positions with a label (default batch x (seq - 1), next-token labels);
    ``lm_chunk``: (rows, vocabulary entries) per LM-head matmul (default: our chunked loss's), which sets the
    measured shape."""
    t, L, h = batch * seq, cfg.num_layers, cfg.hidden_size
    rows = batch * (seq - 1) if label_rows is None else label_rows
    out = []
    for name, (i, o) in linear_shapes(cfg).items():
        out.append(Mm("frozen", f"{name} fwd", t, i, o, L, "nt"))
        # input gradient; layer 0's q/k/v input is the frozen embedding's output: nothing to send back
        out.append(Mm("frozen", f"{name} dx", t, o, i, L - 1 if name == "linear_qkv" else L, "nn"))
    for tg in targets:
        i, o = _IN_OUT[tg](cfg)
        out += [Mm("lora", f"{tg} A fwd", t, i, rank, L, "nt"), Mm("lora", f"{tg} B fwd", t, rank, o, L, "nt"),
                Mm("lora", f"{tg} dB", o, t, rank, L, "tn"), Mm("lora", f"{tg} dh", t, o, rank, L, "nn"),
                Mm("lora", f"{tg} dA", rank, t, i, L, "tn"),
                Mm("lora", f"{tg} dx", t, rank, i, L - 1 if tg in QKV else L, "nn")]
    bh, d = batch * cfg.num_attention_heads, cfg.head_dim
    half = 0.5 * L  # causal: half of the [seq x seq] products are needed
    out += [Mm("attention", "QK^T fwd", seq, d, seq, half, "bmm", bh),
            Mm("attention", "PV fwd", seq, seq, d, half, "bmm", bh),
            Mm("attention", "dP = dO V^T", seq, d, seq, half, "bmm", bh),
            Mm("attention", "dV, dQ, dK", seq, seq, d, 3 * half, "bmm", bh)]
    if rows:
        block, width = lm_chunk or lm_head_chunk(cfg, rows)
        n = rows / block * cfg.vocab_size / width  # matmuls of that shape per step
        out += [Mm("lm_head", "LM head fwd", block, h, width, n, "nt"),
                Mm("lm_head", "LM head dx", block, width, h, n, "nn")]
    return out


def flops_by_group(mms) -> dict[str, float]:
    out = {}
    for mm in mms:
        out[mm.group] = out.get(mm.group, 0.0) + mm.flops
    return out


def total_flops(mms) -> float:
    return sum(mm.flops for mm in mms)


# ---------------------------------------------------------------- measuring
def _operands(mm: Mm, m: int, dtype, device):
    """The product as ``fn(out)`` with its output buffer, and the same product through oneDNN's linear for
    fp32 "nt"/"nn" products on an x86 CPU, the library our training runs them on where it is faster (else None)."""
    from nemo_peft.modules.linear import ONEDNN_LINEAR, onednn_linear
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)  # noqa: E731
    if mm.layout == "bmm":
        a, b = r(mm.batch, m, mm.k), r(mm.batch, mm.k, mm.n)
        return lambda out: torch.bmm(a, b, out=out), torch.empty(mm.batch, m, mm.n, dtype=dtype, device=device), None
    a = r(mm.k, m).t() if mm.layout == "tn" else r(m, mm.k)
    b = r(mm.n, mm.k).t() if mm.layout == "nt" else r(mm.k, mm.n)
    onednn = None
    if ONEDNN_LINEAR and mm.layout in ("nt", "nn") and dtype == torch.float32 and torch.device(device).type == "cpu":
        onednn = lambda: onednn_linear(a, b.t())  # noqa: E731
    return lambda out: torch.mm(a, b, out=out), torch.empty(m, mm.n, dtype=dtype, device=device), onednn


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_gflops(mm: Mm, dtype=torch.float32, device="cpu", reps: int = 5, budget_s: float = 0.5) -> float:
    """GFLOP/s of one product of ``mm``'s shape and layout: the best of at least ``reps`` runs (more,
    up to 20, while they fit in ``budget_s``) after a warmup, of torch.mm and, for the products our training
    may run through oneDNN (modules/linear.py), of oneDNN too: the yardstick is the faster library. When one
    product would take longer than ``budget_s / 4`` (e.g. bf16 on a CPU without bf16 units), the leading
    dimension is cut so that it does not, and the rate of the smaller product is reported."""
    m = mm.m
    fn, out, onednn = _operands(mm, m, dtype, device)
    t = time.perf_counter()
    fn(out)
    _sync(device)
    dt = time.perf_counter() - t
    if dt > budget_s / 4 and m > 8:
        m = max(8, int(m * budget_s / 4 / dt))
        fn, out, onednn = _operands(mm, m, dtype, device)
        t = time.perf_counter()
        fn(out)
        _sync(device)
        dt = time.perf_counter() - t
    per = 2.0 * m * mm.k * mm.n * mm.batch
    reps = max(reps, min(20, int(budget_s / max(dt, 1e-9))))
    best = _best_seconds(lambda: (fn(out), _sync(device)), reps)
    if onednn is not None:
        onednn()  # warmup (its first call sets up the primitive)
        best = min(best, _best_seconds(onednn, reps))
    return per / best / 1e9


def measure_peaks(mms, dtype=torch.float32, device="cpu", reps: int = 5, budget_s: float = 0.5) -> dict[tuple, float]:
    """GFLOP/s of every distinct shape among ``mms`` (key: ``Mm.key``)."""
    peaks = {}
    for mm in mms:
        if mm.key not in peaks:
            peaks[mm.key] = matmul_gflops(mm, dtype, device, reps, budget_s)
    return peaks


def roofline_seconds(mms, peaks) -> float:
    """The step's matmuls each at its own shape's measured peak: a lower bound on the step time."""
    return sum(mm.flops / (peaks[mm.key] * 1e9) for mm in mms)


def copy_bandwidth(mib: int = 512, reps: int = 5, device="cpu") -> float:
    """GB/s of a large copy, counting bytes read + bytes written."""
    n = mib * (1 << 20) // 4
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n * 4 / best / 1e9


def gemv_bandwidth(mib: int = 256, cols: int = 4096, reps: int = 5, device="cpu") -> float:
    """GB/s of an fp32 matrix-vector product, counting the matrix's bytes (what batch-1 decode reads)."""
    rows = max(1, mib * (1 << 20) // (4 * cols))
    w = torch.full((rows, cols), 0.5, device=device)
    x, y = torch.ones(cols, device=device), torch.empty(rows, device=device)
    torch.mv(w, x, out=y)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        torch.mv(w, x, out=y)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return w.numel() * 4 / best / 1e9


# ---------------------------------------------------------------- decode and merge
def decode_bytes(cfg, bytes_per_weight: int = 4, rank: int = 0, targets=()) -> int:
    """Weight bytes batch-1 decoding reads per token: every linear of every layer, the LM head (or the
    tied embedding) once, and with ``rank`` > 0 the LoRA A and B of ``targets`` (unmerged)."""
    per_layer = sum(i * o for i, o in linear_shapes(cfg).values())
    lora = sum(rank * sum(_IN_OUT[tg](cfg)) for tg in targets) if rank else 0
    return bytes_per_weight * (cfg.num_layers * (per_layer + lora) + cfg.vocab_size * cfg.hidden_size)


def merge_matmuls(cfg, rank: int, targets) -> list[Mm]:
    """B·A of every target: [out, r] x [r, in] per layer (as an in-place addmm into the weight)."""
    return [Mm("merge", f"{tg} B·A", _IN_OUT[tg](cfg)[1], rank, _IN_OUT[tg](cfg)[0], cfg.num_layers, "nn")
            for tg in targets]


def merge_bytes(cfg, rank: int, targets, bytes_per_weight: int = 4) -> float:
    """Bytes of the weights a merge rewrites (each read once and written once)."""
    return sum(mm.m * mm.n * mm.count for mm in merge_matmuls(cfg, rank, targets)) * bytes_per_weight


def merge_floor_seconds(cfg, rank: int, targets, peak_gflops: float, copy_gbps: float,
                        bytes_per_weight: int = 4) -> float:
    """B·A at the machine's matmul peak + one read and one write of every merged weight at the copy
    bandwidth (which counts read + write bytes). (A [out, r] x [r, in] product alone is bound by
    writing its output, so its own measured rate would count the weight traffic twice.)"""
    return (total_flops(merge_matmuls(cfg, rank, targets)) / (peak_gflops * 1e9)
            + 2 * merge_bytes(cfg, rank, targets, bytes_per_weight) / (copy_gbps * 1e9))


# ---------------------------------------------------------------- one run's limits, and their report
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class Limits:
    """What ``measure_limits`` found, with the step's matmuls it was measured on."""

    cfg: object
    rank: int
    targets: list
    train_dtype: str  # the yardstick of the training step: "fp32", or "bf16" under autocast
    mms: list
    peaks: dict  # {"fp32": {key: GFLOP/s}, "bf16": {...}}
    copy_gbps: float
    gemv_gbps: float
    copy_mib: int
    gemv_mib: int
    background: list  # cores of other processes' CPU use during each pass, when the caller measured it

    def absorb(self, other: "Limits") -> "Limits":
        """Keep the best of this pass and ``other`` (same configuration): per-shape peaks, bandwidths."""
        for dt, peaks in other.peaks.items():
            for key, v in peaks.items():
                self.peaks[dt][key] = max(self.peaks[dt].get(key, 0.0), v)
        self.copy_gbps, self.gemv_gbps = max(self.copy_gbps, other.copy_gbps), max(self.gemv_gbps, other.gemv_gbps)
        self.background += other.background
        return self

    def matmul_peak(self, dtype: str = "fp32") -> float:
        """The best GFLOP/s measured on any of the step's shapes."""
        return max(self.peaks[dtype].values())

    @property
    def flops(self) -> float:
        return total_flops(self.mms)

    def roofline_s(self) -> float:
        return roofline_seconds(self.mms, self.peaks[self.train_dtype])

    def decode_bound(self, lora: bool = False) -> float:
        """Batch-1 fp32 decode tokens/s if every weight is read once per token at the GEMV bandwidth."""
        return self.gemv_gbps * 1e9 / decode_bytes(self.cfg, 4, self.rank if lora else 0, self.targets)

    def merge_floor_s(self) -> float:
        return merge_floor_seconds(self.cfg, self.rank, self.targets, self.matmul_peak("fp32"), self.copy_gbps)


def measure_limits(cfg, batch, seq, rank, targets, train_dtype="fp32", quick=False, device="cpu",
                   mib: tuple[int, int] | None = None) -> Limits:
    """All limits for one configuration; ``mib``: (copy, GEMV) buffer sizes (default 512 and 256 MiB,
    half that with ``quick``)."""
    mms = train_matmuls(cfg, batch, seq, rank, targets)
    reps = 3 if quick else 5
    peaks = {"fp32": measure_peaks(mms, torch.float32, device, reps),
             "bf16": measure_peaks(mms, torch.bfloat16, device, reps)}
    copy_mib, gemv_mib = mib or ((256, 128) if quick else (512, 256))
    return Limits(cfg, rank, list(targets), train_dtype, mms, peaks, copy_bandwidth(copy_mib, device=device),
                  gemv_bandwidth(gemv_mib, device=device), copy_mib, gemv_mib, [])


def limits_markdown(lim: Limits, tokens: int) -> str:
    """The "Machine limits" section: bandwidths, the step's work, and each matmul shape's peak."""
    g, f = flops_by_group(lim.mms), lim.flops
    lm = next((mm for mm in lim.mms if mm.group == "lm_head"), None)
    rows_lm = round(lm.flops / (2 * lim.cfg.hidden_size * lim.cfg.vocab_size)) if lm else 0
    dec, dec_l = decode_bytes(lim.cfg), decode_bytes(lim.cfg, 4, lim.rank, lim.targets)
    merge_flops = total_flops(merge_matmuls(lim.cfg, lim.rank, lim.targets))
    passes = len(lim.background) or 1
    load = f"; other processes used {', '.join(f'{b:.2f}' for b in lim.background)} cores" if lim.background else ""
    lines = [
        f"- Memory bandwidth: copy **{lim.copy_gbps:.1f} GB/s** ({lim.copy_mib} MiB fp32, bytes read + written); "
        f"GEMV read **{lim.gemv_gbps:.1f} GB/s** (fp32 matrix of {lim.gemv_mib} MiB times a vector, "
        "matrix bytes / time)",
        f"- Training step work (exact, from the model and LoRA config): **{f / 1e9:.1f} GFLOP** of matmuls per step, "
        f"{f / tokens / 1e6:.0f} MFLOP/token: frozen linears {g.get('frozen', 0) / 1e9:.1f} (forward + input gradient; "
        f"none for layer 0's q/k/v), LoRA {g.get('lora', 0) / 1e9:.2f} (forward, dB, dh, dA, dx), causal attention "
        f"{g.get('attention', 0) / 1e9:.2f} (QK^T and PV forward, twice that backward, half for causal), LM head "
        f"{g.get('lm_head', 0) / 1e9:.1f} (forward + input gradient on the {rows_lm} labelled positions)",
        f"- Roofline of the training step: every matmul at its own shape's measured {lim.train_dtype} peak = "
        f"**{lim.roofline_s():.2f} s** per step = {tokens / lim.roofline_s():.0f} tokens/s "
        f"({f / lim.roofline_s() / 1e9:.0f} GFLOP/s on average)",
        f"- Batch-1 fp32 decode reads {dec / 1e6:.0f} MB of weights per token (every linear, plus the LM head / tied "
        f"embedding once; +{(dec_l - dec) / 1e6:.1f} MB of LoRA A/B unmerged): bandwidth bound "
        f"**{lim.decode_bound():.1f} tokens/s** at the GEMV bandwidth ({lim.decode_bound(True):.1f} unmerged); "
        "KV-cache reads and the prompt's prefill are not in the bound",
        f"- Merge floor: B·A ({merge_flops / 1e6:.0f} MFLOP at the fp32 matmul peak, {lim.matmul_peak():.0f} GFLOP/s, "
        f"the best of the shapes below) + one read and one write of the "
        f"{merge_bytes(lim.cfg, lim.rank, lim.targets) / 2 ** 20:.0f} MiB of merged weights at the copy bandwidth = "
        f"**{1e3 * lim.merge_floor_s():.1f} ms**",
        f"- Each number is the best of {passes} measuring pass{'es' if passes > 1 else ''} (before the timed work"
        f"{' and after it' if passes > 1 else ''}{load})",
        "",
        "| matmul of the step | shape | GFLOP per step | fp32 GFLOP/s | bf16 GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    fp, bf = lim.peaks["fp32"], lim.peaks["bf16"]
    for mm in lim.mms:
        if mm.group != "lora":
            lines.append(f"| {mm.name} | {mm.label()} | {mm.flops / 1e9:.2f} | {fp[mm.key]:.1f} | {bf[mm.key]:.1f} |")
    lora = [mm for mm in lim.mms if mm.group == "lora"]
    if lora:
        rng = lambda p: f"{min(p[m.key] for m in lora):.1f}–{max(p[m.key] for m in lora):.1f}"  # noqa: E731
        lines.append(f"| LoRA ({len(lora)} kinds: A, B forward; dB, dh, dA, dx per target) | [*, r={lim.rank}] | "
                     f"{g['lora'] / 1e9:.2f} | {rng(fp)} | {rng(bf)} |")
    return "\n".join(lines) + "\n"
