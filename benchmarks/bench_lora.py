#!/usr/bin/env python
"""LoRA benchmark: nemo_peft vs Hugging Face transformers + peft on SmolLM2-135M-Instruct (CPU).

    python benchmarks/bench_lora.py            # full run (~20-25 min on 2 cores)
    python benchmarks/bench_lora.py --quick    # smoke run (a few minutes)
    python benchmarks/bench_lora.py --bf16     # training under torch.autocast("cpu", bfloat16)
    python benchmarks/bench_lora.py --device cuda [--compile]   # bf16 on a CUDA GPU: runs bench_lora_cuda.py

Timed work alternates between the two sides (A B, then B A, ...) so machine noise hits
both equally. Peak memory and the training step are measured in fresh subprocesses per side
(fresh_process.py). The same run measures
this machine's limits (benchmarks/roofline.py: matmul peak per shape, memory bandwidth) and
reports each side against them. Writes benchmarks/results.md; see benchmarks/README.md.
"""
from __future__ import annotations

import argparse, copy, faulthandler, math, os, shutil, sys, tempfile, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout: nemo_peft (even if not installed) and benchmarks.*

from benchmarks import batched_generation as bg  # noqa: E402
from benchmarks.common import (ALPHA, LR, RANK, TARGETS, CpuMeter, Rows, Trainer, add_lora_hf,  # noqa: E402
                               add_lora_ours, alternate, background_notes, bullets, dir_bytes, load_hf, load_ours,
                               loss_hf, loss_ours, machine_info, make_batches, med, spread, timed,
                               weights_bytes, write_text)
from benchmarks.roofline import limits_markdown, measure_limits  # noqa: E402
from benchmarks.fresh_process import child_main, memory_runs, train_runs  # noqa: E402
from benchmarks.time_split import profile_split, where_time_goes  # noqa: E402
from benchmarks.narrow_twin import per_token_ms  # noqa: E402


def decode_ours(model, prompt, n):
    from nemo_peft.models.generation import SamplingParams, generate
    return generate(model, prompt, params=SamplingParams(max_new_tokens=n, greedy=True), eos_id=None)[0]


def decode_hf(model, prompt, n):
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, pad_token_id=2)
    return out[0, prompt.shape[1]:].tolist()


# ---------------------------------------------------------------- main benchmark
def run(args):
    torch.set_num_threads(args.threads)
    rows, notes = Rows(), []
    row = rows.add
    t_start, whole = time.perf_counter(), CpuMeter()
    prec = "bf16 autocast" if args.bf16 else "fp32"
    tokens = args.batch * args.seq

    print(f"[1/8] peak memory of the training step (a fresh subprocess per side and run, {args.mem_reps} runs)",
          flush=True)
    for recompute in (False, True):
        mem = memory_runs(args, recompute)
        ac = ", activation checkpointing on both sides" if recompute else ""
        label = f"train peak RSS increase, MiB ({prec}{ac})"
        row(label, med(mem["ours"]["increase_mib"]), med(mem["hf"]["increase_mib"]), ".0f", False,
            spread(mem["ours"]["increase_mib"]), spread(mem["hf"]["increase_mib"]))
        if not recompute:
            row("train peak RSS total, MiB", med(mem["ours"]["peak_mib"]), med(mem["hf"]["peak_mib"]), ".0f", False)

    print("[2/8] loading both models", flush=True)
    ours, hf = load_ours(), load_hf()
    ours_base, hf_base = copy.deepcopy(ours), copy.deepcopy(hf)  # pristine bases for adapter loading
    cfg, vocab = ours.config, ours.config.vocab_size

    print("[3/8] this machine's limits: matmul peak per shape (fp32, bf16), memory bandwidth", flush=True)
    lim = limits(args, cfg)
    measured = {}  # medians to hold against the limits at the end

    prompt = torch.randint(100, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    n_new = args.new_tokens

    def decode_pair(label, lora=False):
        got, sides = {}, {"ours": (decode_ours, ours.eval()), "hf": (decode_hf, hf.eval())}

        def fn(side):
            dec, m = sides[side]
            return n_new / timed(lambda: got.__setitem__(side, dec(m, prompt, n_new)))
        with torch.inference_mode():
            a, b = alternate(fn, args.decode_reps, 1)
        row(f"greedy decode tok/s, {label}", med(a), med(b), ".1f", True, spread(a), spread(b))
        measured[f"decode {label}"] = (med(a), med(b), lora)
        assert len(got["ours"]) == n_new and len(got["hf"]) == n_new, "a side stopped early"
        return got

    print(f"[4/8] greedy decoding, batch 1, prompt {args.prompt}, {n_new} new tokens", flush=True)
    base_tok = decode_pair("base")
    notes.append(f"base greedy tokens identical on both sides: {base_tok['ours'] == base_tok['hf']}")
    a, b, same, shrink = per_token_ms(args, ours, decode_ours, decode_hf, n_new)
    row("batch-1 decode, ms a token besides reading the weights (narrow twin: the same layers and operators, "
        f"{shrink:.0f}x fewer weight bytes)", med(a), med(b), ".1f", False, spread(a), spread(b))
    measured["twin overhead"] = (med(a), med(b), shrink)
    notes.append(f"narrow twin (benchmarks/narrow_twin.py): greedy tokens identical on both sides: {same}")
    splits = {}  # one extra profiled run per side of the decode, the batched generation and the training step
    with torch.inference_mode():
        splits["decode"] = [profile_split(lambda: dec(m.eval(), prompt, n_new))
                            for dec, m in ((decode_ours, ours), (decode_hf, hf))]

    print(f"[5/8] batched greedy generation: {args.gen_batch} prompts of 20-50 tokens, {args.gen_new} new", flush=True)
    splits["batched"] = batched_generation(args, ours, hf, row, notes, measured)

    print(f"[6/8] LoRA training step ({prec}), batch {args.batch} x {args.seq} tokens", flush=True)
    ours, hf = add_lora_ours(ours), add_lora_hf(hf)
    n_tr = (sum(p.numel() for p in ours.parameters() if p.requires_grad),
            sum(p.numel() for p in hf.parameters() if p.requires_grad))
    notes.append(f"trainable parameters: nemo_peft {n_tr[0]:,}, HF+peft {n_tr[1]:,}")
    train_meter = CpuMeter()
    runs = train_runs(args)  # fresh processes: the heap this process has grown is not the step's business
    train_load = train_meter.others()
    a, b = runs["ours"]["times"], runs["hf"]["times"]
    row(f"train tokens/s ({prec})", tokens / med(a), tokens / med(b), ".0f", True)
    row("train step time, s (median)", med(a), med(b), ".3f", False, spread(a), spread(b))
    measured["train"] = (med(a), med(b))
    notes.append(f"first-step loss (LoRA B=0, so equal to the base model's): nemo_peft {runs['ours']['first_loss']:.5f}"
                 f", HF+peft {runs['hf']['first_loss']:.5f}")
    notes.append("memory traffic the kernel sees in a training step (fresh pages are faulted in and zeroed; on these "
                 "VMs the cost of a fault varies over time), median per step: " + ", ".join(
                     f"{name} {med(runs[s]['faults']):,.0f} page faults and {med(runs[s]['sys_s']):.2f} s of kernel CPU"
                     for s, name in (("ours", "nemo_peft"), ("hf", "HF+peft"))))
    splits["train"] = [runs["ours"]["split"], runs["hf"]["split"]]
    # a few steps here too, so the adapters saved, reloaded and merged below are trained (B != 0)
    batches = make_batches(2, args.batch, args.seq, vocab)
    for model, loss_fn in ((ours, loss_ours), (hf, loss_hf)):
        trainer = Trainer(model, loss_fn, batches, "cpu" if args.bf16 else None)
        trainer.step(), trainer.step()

    print("[7/8] decoding with LoRA unmerged; adapter save / load", flush=True)
    unmerged = decode_pair("LoRA unmerged", lora=True)
    adapter_io(args, ours, hf, ours_base, hf_base, batches, row, notes)

    print("[8/8] merge / unmerge, then decoding merged", flush=True)
    merge = {"ours": (ours.merge_adapters, ours.unmerge_adapters), "hf": (hf.merge_adapter, hf.unmerge_adapter)}
    unmerge_t = {"ours": [], "hf": []}

    def merge_fn(side):
        dt = timed(merge[side][0])
        unmerge_t[side].append(timed(merge[side][1]))
        return dt
    a, b = alternate(merge_fn, args.merge_reps, 1)
    row("merge adapters, ms", 1e3 * med(a), 1e3 * med(b), ".1f", False)
    measured["merge"] = (med(a), med(b))
    row("unmerge adapters, ms", 1e3 * med(unmerge_t["ours"]), 1e3 * med(unmerge_t["hf"]), ".1f", False)
    ours.merge_adapters()
    hf.merge_adapter()
    merged = decode_pair("LoRA merged")
    notes.append("merged greedy tokens == unmerged: nemo_peft "
                 f"{merged['ours'] == unmerged['ours']}, HF+peft {merged['hf'] == unmerged['hf']}")

    print("[+] the machine's limits again (each number: the best of both passes); the table against them", flush=True)
    lim.absorb(limits(args, cfg))
    notes += against_limits(lim, measured, row)
    notes += background_notes(whole, train_load)
    write_results(args, rows, notes, lim, time.perf_counter() - t_start, where_time_goes(splits, measured, lim, n_new))


def limits(args, cfg):
    meter = CpuMeter()
    lim = measure_limits(cfg, args.batch, args.seq, RANK, TARGETS, "bf16" if args.bf16 else "fp32", args.quick)
    lim.background.append(meter.others())
    print(f"  copy {lim.copy_gbps:.1f} GB/s, GEMV {lim.gemv_gbps:.1f} GB/s, best matmul {lim.matmul_peak():.0f} "
          f"GFLOP/s fp32; step {lim.flops / 1e9:.1f} GFLOP, roofline {lim.roofline_s():.2f} s "
          f"(other processes: {lim.background[-1]:.2f} cores)", flush=True)
    return lim


def against_limits(lim, measured, row):
    """Rows of each side against this machine's own limits (roofline.py)."""
    a, b = measured["train"]
    roof = lim.roofline_s()
    row("train achieved GFLOP/s (the step's matmul FLOPs / median step time)", lim.flops / a / 1e9,
        lim.flops / b / 1e9, ".0f", True)
    row(f"train step, % of roofline ({roof:.2f} s: each matmul at the measured {lim.train_dtype} peak of its shape)",
        100 * roof / a, 100 * roof / b, ".0f", True, unit="%")
    for key in [k for k in measured if k.startswith("decode ")]:
        a, b, lora = measured[key]
        bound = lim.decode_bound(lora)
        row(f"greedy decode, % of the fp32 bandwidth bound ({bound:.1f} tok/s), {key[7:]}", 100 * a / bound,
            100 * b / bound, ".0f", True, unit="%")
    a, b = measured["merge"]
    floor = lim.merge_floor_s()
    row(f"merge, x its floor ({1e3 * floor:.1f} ms: B·A at matmul peak + the weights read and written at copy "
        "bandwidth)", a / floor, b / floor, ".2f", False)
    beat_roof = ["WARNING: a side beat the roofline (over 100%): the matmul peaks were measured low, most likely "
                 "under background load (see Machine limits); rerun on a quiet machine"]
    # the floor adds FLOP time and traffic time; a merge may overlap them
    under_floor = ["merge came in under 1x its floor: it overlapped its B·A FLOPs with the weight traffic"]
    return beat_roof * (roof > min(measured["train"])) + under_floor * (floor > min(measured["merge"]))


def batched_generation(args, ours, hf, row, notes, measured):
    """Exact-match evaluation's generation: left-padded prompts, rows ending at different steps. Returns
    one profiled run per side (ours, HF)."""
    p = bg.make_prompts(args.gen_batch, 20, 50, ours.config.vocab_size)
    with torch.inference_mode():
        # untimed first run of each side without EOS (also their warmup): pick an EOS that rows reach at
        # different steps; the two sides must agree already here
        first = {"ours": bg.generate_ours(ours.eval(), p, args.gen_new, None),
                 "hf": bg.generate_hf(hf.eval(), p, args.gen_new, None)}
        assert first["ours"] == first["hf"], "batched greedy generation differs: " + bg.mismatch_report(
            first["ours"], first["hf"])
        eos, ends = bg.pick_eos(first["ours"])
        got = {}
        fns = {"ours": lambda: bg.generate_ours(ours, p, args.gen_new, eos),
               "hf": lambda: bg.generate_hf(hf, p, args.gen_new, eos)}
        a, b = alternate(lambda side: timed(lambda: got.__setitem__(side, fns[side]())), args.gen_reps, 0)
        profiled = [profile_split(fns[side]) for side in ("ours", "hf")]
    assert got["ours"] == got["hf"], "batched greedy generation with EOS differs: " + bg.mismatch_report(
        got["ours"], got["hf"])
    n = bg.generated_tokens(got["ours"], args.gen_new)
    measured["batched"] = (med(a), med(b))
    row(f"batched greedy generation tok/s ({args.gen_batch} left-padded prompts of 20-50 tokens, "
        f"{args.gen_new} new, rows ending at EOS at different steps)", n / med(a), n / med(b), ".1f", True,
        spread([n / x for x in a]), spread([n / x for x in b]))
    done = sorted(e + 1 for e in ends if e is not None)
    notes.append(f"batched generation: EOS id {eos} ends {len(done)} of {args.gen_batch} rows (after "
                 f"{', '.join(map(str, done)) or 'no'} tokens), the others run all {args.gen_new}; {n} tokens "
                 f"generated per run (prompt lengths {min(p.lengths)}-{max(p.lengths)}); identical tokens on both "
                 "sides (checked, with and without EOS); tok/s = generated tokens / wall time including the prefill")
    return profiled


def adapter_io(args, ours, hf, ours_base, hf_base, batches, row, notes):
    from peft import PeftModel
    tmp = tempfile.mkdtemp(prefix="bench_lora_")
    dirs, loaded = {"ours": f"{tmp}/ours", "hf": f"{tmp}/hf"}, {}
    save = {"ours": lambda: ours.save_adapters(dirs["ours"]), "hf": lambda: hf.save_pretrained(dirs["hf"])}
    load = {"ours": lambda m: (m, m.load_adapters(dirs["ours"]))[0],
            "hf": lambda m: PeftModel.from_pretrained(m, dirs["hf"])}
    bases = {"ours": ours_base, "hf": hf_base}

    def save_fn(side):
        shutil.rmtree(dirs[side], ignore_errors=True)
        return timed(save[side])

    def load_fn(side):
        m = copy.deepcopy(bases[side])  # a fresh base without the adapter (the copy is not timed)
        return timed(lambda: loaded.__setitem__(side, load[side](m)))
    a, b = alternate(save_fn, args.io_reps, 1)
    row("adapter save, ms", 1e3 * med(a), 1e3 * med(b), ".1f", False)
    a, b = alternate(load_fn, args.io_reps, 1)
    row("adapter load into a fresh base model, ms", 1e3 * med(a), 1e3 * med(b), ".1f", False)
    for label, size in (("weights file", weights_bytes), ("whole dir", dir_bytes)):
        row(f"adapter on disk ({label}), KiB", size(dirs["ours"]) / 1024, size(dirs["hf"]) / 1024, ".1f", False)
    with torch.no_grad():
        ids = batches[0][:1, :16]
        same_o = torch.allclose(ours.eval()(ids), loaded["ours"].eval()(ids), atol=1e-5)
        same_h = torch.allclose(hf.eval()(ids).logits, loaded["hf"].eval()(ids).logits, atol=1e-5)
    notes.append(f"reloaded adapter reproduces logits: nemo_peft {same_o}, HF+peft {same_h}")
    shutil.rmtree(tmp, ignore_errors=True)


def write_results(args, rows, notes, lim, elapsed, time_split: str = ""):
    settings = (f"model SmolLM2-135M-Instruct (GGUF, dequantized to fp32); LoRA r={RANK} alpha={ALPHA} dropout 0 on "
                f"{', '.join(TARGETS)}; AdamW lr {LR}; train batch {args.batch} x {args.seq} tokens, "
                f"{'bf16 autocast' if args.bf16 else 'fp32'}, {args.train_procs} fresh processes per side, alternating, "
                f"each {args.warmup} warmup + {args.steps_per_proc} timed steps; "
                f"decode batch 1, prompt {args.prompt}, {args.new_tokens} new tokens, {args.decode_reps} timed runs; "
                f"batched generation {args.gen_batch} prompts, {args.gen_new} new tokens, {args.gen_reps} timed runs "
                f"after one untimed run; save/load {args.io_reps}, merge {args.merge_reps} timed runs; peak RSS: median "
                f"of {args.mem_reps} fresh subprocesses per side, [min–max]"
                f"{' (--quick)' if args.quick else ''}")
    yardstick = (f"Roofline yardstick: the useful matmul FLOPs of the configuration (the same number for both "
                 f"sides; work a side adds, e.g. HF's LM head on the unlabelled last positions, is not counted) "
                 f"against this machine's own limits measured in this run: each matmul at the measured "
                 f"{lim.train_dtype} peak of its shape (% of roofline = roofline time / median step time); "
                 f"decode against the fp32 weight bytes per token at the GEMV read bandwidth; merge against "
                 f"B·A at peak plus one read and write of the merged weights at copy bandwidth.")
    text = (f"# LoRA benchmark: nemo_peft vs HF transformers + peft\n\n{rows.markdown()}\n\n"
            f"Ratio: throughput ours/HF; times, memory, sizes and multiples of a floor HF/ours. "
            f"Cells show the median and [min–max] of the timed runs where it varies.\n\n"
            f"- Machine: {machine_info(args)}\n- Settings: {settings}\n- {yardstick}\n" + bullets(notes)
            + f"- Wall time of the whole benchmark: {elapsed:.0f} s ({time.strftime('%Y-%m-%d %H:%M')})\n\n"
            f"## Machine limits (measured in this run, {args.threads} threads)\n\n"
            + limits_markdown(lim, args.batch * args.seq) + (f"\n\n{time_split}" if time_split else ""))
    write_text(args.out, text)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (this benchmark), or cuda: bench_lora_cuda.py with the "
                    "other arguments (--compile, --model, --tiny, ...; see its --help)")
    for flag, help_ in (("--steps", "timed training steps per side (default 10)"), ("--seq", "sequence length (256)"),
                        ("--warmup", "untimed warmup steps per side (2)"), ("--batch", "batch size (4)")):
        ap.add_argument(flag, type=int, default=None, help=help_)
    ap.add_argument("--bf16", action="store_true", help="train under torch.autocast('cpu', bfloat16) on both sides")
    ap.add_argument("--quick", action="store_true", help="small numbers: a smoke run of a few minutes")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's table of the profiled "
                    "training step")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"), help="markdown output file")
    ap.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)  # a fresh_process child
    ap.add_argument("--child-task", choices=["memory", "train"], default="memory", help=argparse.SUPPRESS)
    ap.add_argument("--child-steps", type=int, default=0, help=argparse.SUPPRESS)  # train child: timed steps
    ap.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)  # child: activation checkpointing
    args = ap.parse_args(argv)
    q = args.quick
    for k, v in dict(steps=2 if q else 10, warmup=1 if q else 2, seq=64 if q else 256, batch=4).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.prompt, args.new_tokens = 32, 32 if q else 128
    args.decode_reps, args.io_reps, args.merge_reps, args.gen_reps = (1, 2, 2, 1) if q else (3, 5, 5, 5)
    args.gen_batch, args.gen_new = 25, 16
    args.mem_reps = 1 if q else 3
    args.train_procs = 1 if q else 3
    args.steps_per_proc = math.ceil(args.steps / args.train_procs)  # so about args.steps timed steps per side
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device", default="cpu")
    if pre.parse_known_args(argv)[0].device != "cpu":  # the GPU comparison has its own script and flags
        from benchmarks import bench_lora_cuda
        return bench_lora_cuda.main(argv)
    args = parse_args(argv)
    child_main(args) if args.child else run(args)


if __name__ == "__main__":
    faulthandler.enable()  # a crash inside a compiler or kernel (--device cuda --compile) prints where Python was
    main()
