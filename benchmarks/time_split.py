"""Where a measured run's time goes: matmuls (with the FLOPs they did), attention kernels, every other
operator, and the time outside operators (Python, autograd and framework code between them).

One call of the work under ``torch.profiler`` with ``record_shapes``; each operator's *self* CPU time
is summed by kind, so nothing is counted twice (``aten::linear`` is its ``aten::mm`` child). The
profiler adds a few microseconds per operator, so shares are what to read, not absolute times. This
is the evidence ``results.md`` gives for a target it does not meet: e.g. a step that would still miss
its roofline if everything but its matmuls took no time at all.
"""
from __future__ import annotations

import math, time
from dataclasses import dataclass, field

from benchmarks.narrow_twin import overhead_verdict

# operators that multiply matrices; an in-place variant (``addmm_``) counts as its base name
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv", "aten::addmv",
              "aten::_addmm_activation", "mkldnn::_linear_pointwise"}
ATTENTION_PREFIX = "aten::_scaled_dot_product"  # SDPA's flash / efficient / math kernels, forward and backward


def matmul_flops(name: str, shapes: list) -> float:
    """2·m·k·n (per batch) of one matmul operator call from its recorded input shapes; 0 when unknown."""
    base = name.rstrip("_")
    try:
        if base in ("aten::mm", "aten::bmm"):
            a, b = shapes[0], shapes[1]
        elif base in ("aten::addmm", "aten::baddbmm", "aten::_addmm_activation"):
            a, b = shapes[1], shapes[2]
        elif base == "aten::mv":
            return 2.0 * math.prod(shapes[0])
        elif base == "aten::addmv":
            return 2.0 * math.prod(shapes[1])
        elif base == "mkldnn::_linear_pointwise":  # x [..., k] times weight [n, k]
            x, w = shapes[0], shapes[1]
            return 2.0 * math.prod(x) * w[0]
        else:
            return 0.0
        return 2.0 * math.prod(a[:-1]) * b[-1] * a[-1] if len(a) == len(b) else 0.0
    except (IndexError, TypeError):
        return 0.0


def kind_of(name: str) -> str:
    if name.rstrip("_") in MATMUL_OPS:
        return "matmul"
    if name.startswith(ATTENTION_PREFIX):
        return "attention"
    return "other"


@dataclass
class Split:
    """Seconds of one profiled run by kind; ``outside_s`` = wall time not inside any operator."""
    wall_s: float
    matmul_s: float = 0.0
    matmul_flops: float = 0.0
    attention_s: float = 0.0
    other_s: float = 0.0
    calls: int = 0  # operator calls, nested ones included
    top_other: list = field(default_factory=list)  # (operator, seconds), largest first

    @property
    def outside_s(self) -> float:
        return max(0.0, self.wall_s - self.matmul_s - self.attention_s - self.other_s)

    def share(self, seconds: float) -> float:
        return 100.0 * seconds / self.wall_s if self.wall_s else 0.0

    @property
    def matmul_gflops(self) -> float:
        """FLOP rate while inside the matmul operators."""
        return self.matmul_flops / self.matmul_s / 1e9 if self.matmul_s else 0.0


def split_events(events, wall_s: float, top: int = 4) -> Split:
    """Sum ``(name, self_seconds, input_shapes)`` triples (one per operator call) into a ``Split``."""
    out, other = Split(wall_s), {}
    for name, self_s, shapes in events:
        out.calls += 1
        kind = kind_of(name)
        if kind == "matmul":
            out.matmul_s += self_s
            out.matmul_flops += matmul_flops(name, shapes)
        elif kind == "attention":
            out.attention_s += self_s
        else:
            out.other_s += self_s
            other[name] = other.get(name, 0.0) + self_s
    out.top_other = sorted(other.items(), key=lambda kv: -kv[1])[:top]
    return out


def profile_split(fn, print_title: str | None = None) -> Split:
    """Run ``fn()`` once under the profiler and split its time; with ``print_title``, also print
    torch.profiler's table of the operators by self time."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    if print_title:
        print(f"\n==== {print_title} ====\n" + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return split_events([(e.name, e.self_cpu_time_total / 1e6, e.input_shapes) for e in p.events()], wall)


def split_table(columns: dict[str, Split]) -> str:
    """Markdown: one column per profiled run."""
    heads = ["", *columns]
    s = list(columns.values())

    def cells(f):
        return [f(x) for x in s]
    rows = [
        ["wall time of the profiled run, ms", *cells(lambda x: f"{1e3 * x.wall_s:.0f}")],
        ["matmul operators, ms (% of wall)", *cells(lambda x: f"{1e3 * x.matmul_s:.0f} ({x.share(x.matmul_s):.0f}%)")],
        ["... their FLOP rate, GFLOP/s", *cells(lambda x: f"{x.matmul_gflops:.0f}")],
        ["attention kernels (SDPA), ms (%)", *cells(lambda x: f"{1e3 * x.attention_s:.0f} ({x.share(x.attention_s):.0f}%)")],
        ["all other operators, ms (%)", *cells(lambda x: f"{1e3 * x.other_s:.0f} ({x.share(x.other_s):.0f}%)")],
        ["outside operators (Python, autograd, framework), ms (%)",
         *cells(lambda x: f"{1e3 * x.outside_s:.0f} ({x.share(x.outside_s):.0f}%)")],
        ["largest other operators, ms",
         *cells(lambda x: ", ".join(f"{n.split('::')[-1]} {1e3 * t:.0f}" for n, t in x.top_other))],
    ]
    from benchmarks.common import md_table
    return md_table(heads, rows)


def train_verdict(ours: Split, step_s: float, hf_step_s: float, roofline_s: float, peak_gflops: float,
                  roof_target: float = 0.85, ratio_target: float = 1.25) -> str:
    """What the profile says about the training-step targets: ``step_s``/``hf_step_s`` are the timed
    medians, ``roofline_s`` the step at every matmul's measured peak, ``peak_gflops`` its average rate."""
    f = lambda x: x / ours.wall_s * step_s  # a profiled share, in seconds of the timed median
    mm = f(ours.matmul_s)
    need_roof, need_ratio = roofline_s / roof_target, hf_step_s / ratio_target
    binds = "the roofline target" if need_roof < need_ratio else f"the {ratio_target}x HF+peft target"
    return (f"training step, nemo_peft: matmul operators {ours.share(ours.matmul_s):.0f}% of the step "
            f"({mm:.2f} s of the {step_s:.2f} s median) at {ours.matmul_gflops:.0f} GFLOP/s, "
            f"{100 * ours.matmul_gflops / peak_gflops:.0f}% of the roofline's average per-shape peak "
            f"({peak_gflops:.0f}); with everything else taking no time the step would be at "
            f"{100 * roofline_s / mm:.0f}% of its roofline. {100 * roof_target:.0f}% of the roofline needs a step of "
            f"{need_roof:.2f} s, {ratio_target}x HF+peft one of {need_ratio:.2f} s: {binds} binds. Everything "
            f"but matmuls takes {step_s - mm:.2f} s now: attention kernels {f(ours.attention_s):.2f} s, "
            f"other operators {f(ours.other_s):.2f} s, outside operators {f(ours.outside_s):.2f} s.")


def decode_verdict(ours: Split, tokens: int, tok_s: float, bound_tok_s: float, target: float = 0.8) -> str:
    """Batch-1 decoding against the bandwidth bound: how long the GEMVs alone take per token. ``ours``:
    a profiled run that generated ``tokens``; its GEMVs' self time is read as measured (the profiler's
    per-call cost inflates a token's thousands of small calls, not a GEMV's milliseconds)."""
    token_ms, bound_ms = 1e3 / tok_s, 1e3 / bound_tok_s
    gemv_ms = min(token_ms, 1e3 * ours.matmul_s / tokens)  # the prompt's prefill included: an upper bound
    budget = bound_ms / target - gemv_ms
    return (f"batch-1 decode, nemo_peft: the weight products (GEMVs) take {gemv_ms:.1f} ms of a {token_ms:.1f} ms "
            f"token, against {bound_ms:.1f} ms for reading the weights at the measured GEMV bandwidth (the bound); "
            f"{100 * target:.0f}% of the bound is {bound_ms / target:.1f} ms a token, "
            + (f"which leaves {budget:.1f} ms for everything else; " if budget >= 0 else
               f"which the GEMVs alone already exceed by {-budget:.1f} ms; ")
            + f"everything else takes {token_ms - gemv_ms:.1f} ms now (~{ours.calls / tokens:.0f} "
            f"operator calls a token, nested ones included).")


def ceiling_verdict(what: str, ours: Split, ours_s: float, hf_s: float, target: float) -> str:
    """The best ratio over HF+peft our own matmuls allow: ours with every other operator taking no time."""
    mm = ours_s * ours.matmul_s / ours.wall_s
    return (f"{what}: our matmul operators take {ours.share(ours.matmul_s):.0f}% of our run ({mm:.2f} of "
            f"{ours_s:.2f} s, at {ours.matmul_gflops:.0f} GFLOP/s); even with everything else at zero we would "
            f"be {hf_s / mm:.2f}x HF+peft's {hf_s:.2f} s (target {target}x; measured {hf_s / ours_s:.2f}x).")


def where_time_goes(splits, measured, lim, decode_tokens: int) -> str:
    """bench_lora's section: ``splits[run]`` = [ours, HF] profiled runs of "train", "decode" (batch 1,
    ``decode_tokens`` new) and "batched"; ``measured`` its timed medians; ``lim`` the machine's limits."""
    cols = {f"{side} {what}": splits[key][i] for key, what in (("train", "train step"), ("decode", "decode"),
                                                                  ("batched", "batched generation"))
            for i, side in enumerate(("nemo_peft", "HF+peft"))}
    ours = {k: v[0] for k, v in splits.items()}
    (a, b), (tok_a, _, lora), (ga, gb) = measured["train"], measured["decode base"], measured["batched"]
    verdicts = [train_verdict(ours["train"], a, b, lim.roofline_s(), lim.flops / lim.roofline_s() / 1e9),
                decode_verdict(ours["decode"], decode_tokens, tok_a, lim.decode_bound(lora)),
                overhead_verdict(*measured["twin overhead"], lim.decode_bound(lora)),
                ceiling_verdict("batched generation", ours["batched"], ga, gb, 2.0),
                ceiling_verdict("training step", ours["train"], a, b, 1.25)]
    return ("## Where the time goes (torch.profiler: one extra run per side, not among the timed ones)\n\n"
            "Self time of the operators by kind; the profiler adds a few microseconds per call, so read the "
            "shares. Matmul FLOPs are counted from each call's shapes.\n\n" + split_table(cols) + "\n\n"
            + "".join(f"- {v}\n" for v in verdicts))
