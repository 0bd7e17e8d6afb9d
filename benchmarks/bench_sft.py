#!/usr/bin/env python
"""SFT benchmark on variable-length data: nemo_peft packed, nemo_peft unpacked, HF transformers + peft (CPU).

    python benchmarks/bench_sft.py             # full run: 96 examples per side (~11 min on 2 idle cores)
    python benchmarks/bench_sft.py --quick     # smoke run: 32 examples per side (~5 min)
    python benchmarks/bench_sft.py --profile   # also a torch.profiler table of one step per side

A seeded, synthetic instruction set (token ids from SmolLM2's vocabulary; prompt and answer lengths
log-normal, 30-512 tokens, most short) trained with answer-only loss, LoRA r16 on all seven projection
kinds, AdamW, one optimizer step per micro-batch, fp32, on SmolLM2-135M-Instruct from its GGUF:
  - ours packed:   rows of 512 tokens by first-fit decreasing over the whole set (rows shuffled, as the
                   packed sampler does), block-diagonal causal attention (segment_ids / position_ids);
                   the micro batch of rows is chosen so a step holds about 8 examples;
  - ours unpacked: micro batch 8, padded to the longest in the batch (collate_sft);
  - HF + peft:     micro batch 8, dynamic padding (pad to the longest, attention_mask, labels -100), as
                   its Trainer with DataCollatorForSeq2Seq does.
All sides train on the same examples. Timed work alternates between the sides chunk by chunk (every
order of the three in turn), so machine noise hits all of them. Peak memory is measured in one fresh
subprocess per side, over 2 steps on that side's largest micro-batch. Writes benchmarks/results_sft.md.
"""
from __future__ import annotations

import argparse, copy, ctypes, gc, itertools, json, math, os, statistics, subprocess, sys, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout: nemo_peft (even if not installed) and benchmarks.*
from benchmarks.common import (ALPHA, LR, RANK, TARGETS, CpuMeter, Trainer, add_lora_hf,  # noqa: E402
                               add_lora_ours, load_hf, load_ours, machine_info, proc_kb, write_text)

SIDES = ("packed", "unpacked", "hf")
NAMES = {"packed": "nemo_peft packed", "unpacked": "nemo_peft unpacked", "hf": "HF+peft (dynamic padding)"}
MICRO, ROW, MIN_LEN, VOCAB, PAD = 8, 512, 30, 49152, 0


# ---------------------------------------------------------------- data
def make_examples(n, seed=0):
    """SFTDataset-like items: prompt ~ lognormal(median 60), answer ~ lognormal(median 40), 30..512 tokens."""
    g, out = torch.Generator().manual_seed(seed), []
    for _ in range(n):
        z = torch.randn(2, generator=g).tolist()
        p = min(max(round(math.exp(math.log(60) + 0.9 * z[0])), 8), 440)
        a = max(min(max(round(math.exp(math.log(40) + 0.9 * z[1])), 4), ROW - p), MIN_LEN - p)
        ids = torch.randint(100, VOCAB, (p + a,), generator=g).tolist()
        out.append({"input_ids": ids, "loss_mask": [0] * p + [1] * a, "context_ids": ids[:p], "answer": "",
                    "metadata": {}})
    return out


def hf_batch(items):
    """Pad to the longest in the batch; labels are the ids on answer tokens, -100 elsewhere (HF shifts them)."""
    t = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), t), PAD, dtype=torch.long)
    att = torch.zeros((len(items), t), dtype=torch.long)
    labels = torch.full((len(items), t), -100, dtype=torch.long)
    for r, it in enumerate(items):
        x, n = torch.tensor(it["input_ids"]), len(it["input_ids"])
        ids[r, :n], att[r, :n] = x, 1
        labels[r, :n] = torch.where(torch.tensor(it["loss_mask"]) > 0, x, -100)
    return {"input_ids": ids, "attention_mask": att, "labels": labels}


def with_stats(batch, items):
    batch["stats"] = {"real": sum(len(it["input_ids"]) for it in items),
                      "trained": sum(sum(it["loss_mask"][1:]) for it in items),  # the first token is never a target
                      "processed": batch["input_ids"].numel()}
    return batch


def make_batches(examples, seed=0):
    """{side: [batch, ...]}, each batch a dict of tensors plus "stats"; and the packed micro batch (rows)."""
    from nemo_peft.data.collate import collate_sft
    from nemo_peft.data.packing import collate_packed, first_fit_decreasing
    n = len(examples)
    groups = [examples[i:i + MICRO] for i in range(0, n, MICRO)]
    bins = first_fit_decreasing([len(e["input_ids"]) for e in examples], ROW)
    bins = [bins[i] for i in torch.randperm(len(bins), generator=torch.Generator().manual_seed(seed)).tolist()]
    rows_per_step = max(1, round(MICRO * len(bins) / n))
    packed = []
    for i in range(0, len(bins), rows_per_step):
        rows = [[examples[j] for j in b] for b in bins[i:i + rows_per_step]]
        packed.append(with_stats(collate_packed(rows, PAD), [it for r in rows for it in r]))
    keep = ("input_ids", "labels", "loss_mask")
    unpacked = [with_stats({k: v for k, v in collate_sft(g, PAD).items() if k in keep}, g) for g in groups]
    hf = [with_stats(hf_batch(g), g) for g in groups]
    return {"packed": packed, "unpacked": unpacked, "hf": hf}, rows_per_step, len(bins)


# ---------------------------------------------------------------- the three sides
def loss_ours(sft, batch):
    return sft.loss(batch)  # GPTSFTModel: hidden states, then the LM head on the answer positions only


def loss_hf(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                 use_cache=False).loss


def build_side(side, base=None):
    """(module the loss runs on, loss function); LoRA added, in train mode."""
    if side == "hf":
        return add_lora_hf(load_hf()).train(), loss_hf
    from nemo_peft.models.gpt_sft import GPTSFTModel
    return GPTSFTModel(add_lora_ours(base if base is not None else load_ours())).train(), loss_ours


def largest(batches):
    return max(batches, key=lambda b: (b["stats"]["processed"], b["stats"]["trained"]))


def check_losses(mods):
    """Packed vs unpacked (same model): <= 1e-4 relative; HF vs ours unpacked (LoRA B = 0): <= 1e-3."""
    from nemo_peft.data.collate import collate_sft
    from nemo_peft.data.packing import collate_packed
    ex = sorted(make_examples(16, seed=1), key=lambda e: len(e["input_ids"]))[7:9]  # two mid-length examples
    assert sum(len(e["input_ids"]) for e in ex) <= ROW
    with torch.no_grad():
        got = {"packed": loss_ours(mods["packed"], collate_packed([ex], PAD)).item(),
               "unpacked": loss_ours(mods["unpacked"], collate_sft(ex, PAD)).item(),
               "hf": loss_hf(mods["hf"], hf_batch(ex)).item()}
    rel = lambda a, b: abs(a - b) / abs(b)  # noqa: E731
    print(f"  losses on 2 examples: {got}", flush=True)
    if rel(got["packed"], got["unpacked"]) > 1e-4 or rel(got["hf"], got["unpacked"]) > 1e-3:
        sys.exit(f"ABORT: losses disagree (packed vs unpacked must be <= 1e-4 relative, HF vs ours <= 1e-3): {got}")
    return got


# ---------------------------------------------------------------- memory (own subprocess per side)
def mem_child(args):
    torch.set_num_threads(args.threads)
    module, loss_fn = build_side(args.child)
    batches = make_batches(make_examples(args.examples))[0][args.child]
    big = largest(batches)
    tr = Trainer(module, loss_fn)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    base = proc_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (peak RSS) to the current RSS
        f.write("5")
    for _ in range(2):  # step 1 creates AdamW state; step 2 runs backward with it alive
        tr.step(big)
    peak = proc_kb("VmHWM")
    print("RESULT " + json.dumps({"increase_mib": (peak - base) / 1024, "peak_mib": peak / 1024,
                                  "shape": list(big["input_ids"].shape)}), flush=True)


def measure_memory(side, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--examples", str(args.examples),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"memory child {side} failed:\n{out.stderr[-3000:]}")


# ---------------------------------------------------------------- main
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run(args):
    torch.set_num_threads(args.threads)
    t_start, whole = time.perf_counter(), CpuMeter()
    examples = make_examples(args.examples)
    lengths = [len(e["input_ids"]) for e in examples]
    answers = [sum(e["loss_mask"]) for e in examples]
    dist = (f"{len(examples)} examples, length p50 {pct(lengths, .5)} / p95 {pct(lengths, .95)} / min {min(lengths)} "
            f"/ max {max(lengths)} tokens (mean {statistics.mean(lengths):.0f}); answer p50 {pct(answers, .5)} / "
            f"p95 {pct(answers, .95)} (answers are {100 * sum(answers) / sum(lengths):.0f}% of the tokens)")
    print(dist, flush=True)
    batches, rows_per_step, n_rows = make_batches(examples)
    print(f"packed: {n_rows} rows of {ROW}, {rows_per_step} rows per micro-batch "
          f"(~{len(examples) * rows_per_step / n_rows:.1f} examples per step)", flush=True)

    print("[1/3] peak memory (fresh subprocess per side, 2 steps on its largest micro-batch)", flush=True)
    mem = {side: measure_memory(side, args) for side in SIDES}

    print("[2/3] loading models; loss check on 2 examples", flush=True)
    ours = load_ours()
    mods = {"packed": build_side("packed", ours)[0]}
    mods["unpacked"] = copy.deepcopy(mods["packed"])
    mods["hf"] = build_side("hf")[0]
    for m in mods.values():
        m.eval()
    guard = check_losses(mods)
    tr = {s: Trainer(mods[s].train(), loss_hf if s == "hf" else loss_ours) for s in SIDES}

    print(f"[3/3] timing: {args.warmup} warmup step(s) per side, then {args.chunks} alternating chunks", flush=True)
    for s in SIDES:  # on the side's largest micro-batch, so the allocator has grown before timing
        for _ in range(args.warmup):
            tr[s].step(largest(batches[s]))
    chunks = {s: [batches[s][i::args.chunks] for i in range(args.chunks)] for s in SIDES}  # strided: same mix
    times, done = {s: [] for s in SIDES}, {s: {"real": 0, "trained": 0, "processed": 0, "steps": 0} for s in SIDES}
    rates = {s: [] for s in SIDES}
    orders = itertools.cycle(itertools.permutations(SIDES))
    meter = CpuMeter()
    for i in range(args.chunks):
        for s in next(orders):
            dt = sum(tr[s].step(b) for b in chunks[s][i])
            times[s].append(dt)
            rates[s].append(sum(b["stats"]["trained"] for b in chunks[s][i]) / dt)
            for b in chunks[s][i]:
                for k, v in b["stats"].items():
                    done[s][k] += v
                done[s]["steps"] += 1
            print(f"  chunk {i + 1}/{args.chunks} {s:8s} {len(chunks[s][i])} steps {dt:6.1f} s", flush=True)
    busy = meter.others()
    if args.profile:
        profile(tr, batches)

    res = {}
    for s in SIDES:
        t, d = sum(times[s]), done[s]
        res[s] = {"trained": d["trained"] / t, "real": d["real"] / t, "processed": d["processed"] / t,
                  "pad": 1 - d["real"] / d["processed"], "time": t, "steps": d["steps"],
                  "step": t / d["steps"], "mem": mem[s]["increase_mib"], "shape": mem[s]["shape"],
                  "chunk_tps": rates[s]}
    assert done["packed"]["trained"] == done["unpacked"]["trained"] == done["hf"]["trained"], done
    write_results(args, res, dist, rows_per_step, n_rows, guard, busy, whole.others(), time.perf_counter() - t_start)


def profile(tr, batches):
    from torch.profiler import ProfilerActivity, profile as prof
    for s in SIDES:
        b = largest(batches[s])
        with prof(activities=[ProfilerActivity.CPU]) as p:
            tr[s].step(b)
        print(f"\n==== profile of one training step: {NAMES[s]}, batch {list(b['input_ids'].shape)} ====")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def write_results(args, res, dist, rows_per_step, n_rows, guard, busy, busy_all, elapsed):
    head = ["| side | micro-batch | steps | trained tok/s | all (non-pad) tok/s | processed tok/s | padding "
            "fraction | step time, s (mean) | peak RSS increase, MiB |", "|---|---|---|---|---|---|---|---|---|"]
    mb = {"packed": f"{rows_per_step} rows x <= {ROW}", "unpacked": f"{MICRO} examples", "hf": f"{MICRO} examples"}
    lines = [f"| {NAMES[s]} | {mb[s]} | {r['steps']} | {r['trained']:.0f} [{min(r['chunk_tps']):.0f}–"
             f"{max(r['chunk_tps']):.0f}] | {r['real']:.0f} | {r['processed']:.0f} | {100 * r['pad']:.1f}% | "
             f"{r['step']:.2f} | {r['mem']:.0f} (batch {r['shape'][0]}x{r['shape'][1]}) |"
             for s, r in res.items()]
    ratio = ["| ratio | trained tok/s | all tok/s | peak RSS (lower is better: b/a) |", "|---|---|---|---|"]
    for a, b in (("packed", "unpacked"), ("packed", "hf"), ("unpacked", "hf")):
        ra, rb = res[a], res[b]
        ratio.append(f"| {NAMES[a]} / {NAMES[b]} | {ra['trained'] / rb['trained']:.2f}x | "
                     f"{ra['real'] / rb['real']:.2f}x | {rb['mem'] / ra['mem']:.2f}x |")
    pu, ph = res["packed"]["trained"] / res["unpacked"]["trained"], res["packed"]["trained"] / res["hf"]["trained"]
    notes = [f"Machine: {machine_info(args)}", f"Data: {dist}",
             f"Settings: SmolLM2-135M-Instruct (GGUF, dequantized to fp32); LoRA r={RANK} alpha={ALPHA} dropout 0 on "
             f"{', '.join(TARGETS)}; AdamW lr {LR}; answer-only loss; one optimizer step per micro-batch; packed rows "
             f"of {ROW} by first-fit decreasing over the whole set ({n_rows} rows, shuffled); {args.warmup} untimed "
             f"warmup step(s) per side on its largest micro-batch, then {args.chunks} alternating chunks"
             f"{' (--quick)' if args.quick else ''}",
             f"Loss check on 2 examples before timing (LoRA B = 0): {', '.join(f'{k} {v:.5f}' for k, v in guard.items())}",
             f"Acceptance: packed / unpacked trained tok/s {pu:.2f}x (target >= 1.5x: {'met' if pu >= 1.5 else 'NOT met'});"
             f" packed / HF+peft {ph:.2f}x (aim >= 2x: {'met' if ph >= 2 else 'not met'})",
             f"CPU used by other processes (background noise), in cores: {busy:.2f} during timing, {busy_all:.2f} "
             f"over the whole run (of {os.cpu_count()} logical CPUs)",
             *(["WARNING: other processes used a sizeable share of the CPU; absolute numbers are inflated and the "
                "ratios compressed. Rerun on an idle machine."] if busy > 0.2 else []),
             f"Wall time of the whole benchmark: {elapsed:.0f} s ({time.strftime('%Y-%m-%d %H:%M')})"]
    text = ("# SFT benchmark: packed vs unpacked vs HF transformers + peft (variable-length data)\n\n"
            + "\n".join(head + lines) + "\n\n" + "\n".join(ratio) + "\n\n"
            "trained tok/s = answer tokens (loss targets) per second of training step; all tok/s = non-pad tokens "
            "per second; processed = tokens including padding; padding fraction = pad / processed. Brackets: "
            "min–max over the chunks. Every side trains on the same examples, so the trained-token totals are "
            "equal and the ratios are ratios of time (chunks hold different examples per side, so only the whole-run "
            "totals compare like with like).\n\n" + "".join(f"- {n}\n" for n in notes))
    write_text(args.out, text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=None, help="timed examples per side (96; --quick 32)")
    ap.add_argument("--chunks", type=int, default=None, help="alternation chunks (6; --quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warmup steps per side (1)")
    ap.add_argument("--quick", action="store_true", help="about 3x less work")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step per side")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    ap.add_argument("--out", default=os.path.join(HERE, "results_sft.md"), help="markdown output file")
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)  # memory subprocess
    args = ap.parse_args()
    args.examples = args.examples or (32 if args.quick else 96)
    args.chunks = args.chunks or (2 if args.quick else 6)
    mem_child(args) if args.child else run(args)


if __name__ == "__main__":
    main()
