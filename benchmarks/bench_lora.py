#!/usr/bin/env python
"""LoRA benchmark: nemo_peft vs Hugging Face transformers + peft on SmolLM2-135M-Instruct (CPU).

    python benchmarks/bench_lora.py            # full run (~10 min on 2 cores)
    python benchmarks/bench_lora.py --quick    # smoke run (< 3 min)
    python benchmarks/bench_lora.py --bf16     # training under torch.autocast("cpu", bfloat16)

Timed work alternates between the two sides (A B, then B A, ...) so machine noise hits
both equally. Peak memory is measured in one fresh subprocess per side. Writes
benchmarks/results.md; see benchmarks/README.md for what each number means.
"""
from __future__ import annotations

import argparse, contextlib, copy, ctypes, gc, json, os, platform, shutil, statistics, subprocess, sys
import tempfile, time

import torch
import torch.nn.functional as F
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation chatter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # use the checkout even if nemo_peft is not installed

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR = 16, 32, 1e-4


# ---------------------------------------------------------------- the two sides
def load_ours():
    from nemo_peft.convert.gguf import gguf_default_path, load_gguf
    return load_gguf(gguf_default_path())[0]


def load_hf():
    import transformers
    from transformers import AutoModelForCausalLM
    from nemo_peft.convert.gguf import gguf_default_path
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    p = gguf_default_path()
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p),
                                                dtype=torch.float32).eval()


def add_lora_ours(model):
    from nemo_peft.peft.lora import LoraPEFTConfig
    model.add_adapter(LoraPEFTConfig(target_modules=TARGETS, dim=RANK, alpha=ALPHA, dropout=0.0))
    return model


def add_lora_hf(model):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def loss_ours(model, ids):
    # Next-token loss over every position (labels shifted left, -100 at the end, as HF's ForCausalLMLoss
    # with labels=ids), through the model's own training loss: the LM head in chunks, no full logits.
    labels = F.pad(ids[:, 1:], (0, 1), value=-100)
    return model.lm_loss(model(ids, return_hidden=True), labels)


def loss_hf(model, ids):
    return model(input_ids=ids, labels=ids, use_cache=False).loss  # no KV cache in training, like ours


def decode_ours(model, prompt, n):
    from nemo_peft.models.generation import SamplingParams, generate
    return generate(model, prompt, params=SamplingParams(max_new_tokens=n, greedy=True), eos_id=None)[0]


def decode_hf(model, prompt, n):
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, pad_token_id=2)
    return out[0, prompt.shape[1]:].tolist()


class Trainer:
    """One LoRA training step: forward + loss, backward, AdamW step, zero_grad."""

    def __init__(self, model, loss_fn, bf16: bool, batches):
        self.model, self.loss_fn, self.batches, self.i = model.train(), loss_fn, batches, 0
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
        self.ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.losses = []

    def step(self) -> float:
        ids = self.batches[self.i % len(self.batches)]
        self.i += 1
        t = time.perf_counter()
        with self.ctx():
            loss = self.loss_fn(self.model, ids)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t
        self.losses.append(loss.item())
        return dt


def make_batches(n, batch, seq, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


# ---------------------------------------------------------------- helpers
def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def alternate(f, reps, warmup):
    """Call f("ours") and f("hf") alternately (ours hf, hf ours, ...); each call returns its measurement."""
    out = {"ours": [], "hf": []}
    for i in range(warmup + reps):
        for side in ("ours", "hf") if i % 2 == 0 else ("hf", "ours"):
            v = f(side)
            if i >= warmup:
                out[side].append(v)
    return out["ours"], out["hf"]


def proc_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_seconds():
    """(busy CPU-seconds of the whole machine from /proc/stat, steal included; our own CPU-seconds)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    t = os.times()
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """Cores' worth of CPU used by everything else on this machine since creation (background noise)."""

    def __init__(self):
        self.t0, (self.busy0, self.own0) = time.perf_counter(), cpu_seconds()

    def others(self) -> float:
        busy, own = cpu_seconds()
        return max(0.0, (busy - self.busy0) - (own - self.own0)) / (time.perf_counter() - self.t0)


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def weights_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))


# ---------------------------------------------------------------- memory (own subprocess per side)
def mem_child(args):
    """Peak RSS of the training loop alone: reset the kernel's high-water mark after setup."""
    torch.set_num_threads(args.threads)
    ours = args.child == "ours"
    model = add_lora_ours(load_ours()) if ours else add_lora_hf(load_hf())
    if args.recompute:  # activation checkpointing, each side its own way
        if ours:
            model.set_activation_checkpointing(True)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batches = make_batches(2, args.batch, args.seq, model.config.vocab_size)
    tr = Trainer(model, loss_ours if ours else loss_hf, args.bf16, batches)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed loader buffers back so they are not reused silently
    base = proc_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (peak RSS) to the current RSS
        f.write("5")
    for _ in range(2):  # step 1 creates AdamW state; step 2 runs backward with that state alive
        tr.step()
    peak = proc_kb("VmHWM")
    print("RESULT " + json.dumps({"base_mib": base / 1024, "peak_mib": peak / 1024,
                                  "increase_mib": (peak - base) / 1024}), flush=True)


def measure_memory(side, args, recompute=False):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--seq", str(args.seq),
           "--batch", str(args.batch), "--threads", str(args.threads)] + (["--bf16"] if args.bf16 else []) \
        + (["--recompute"] if recompute else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"memory child {side} failed:\n{out.stderr[-3000:]}")


# ---------------------------------------------------------------- main benchmark
med = statistics.median


def spread(xs):
    return f"[{min(xs):.3g}–{max(xs):.3g}]" if len(xs) > 1 else ""


def run(args):
    torch.set_num_threads(args.threads)
    rows, notes = [], []

    def row(metric, a, b, fmt, higher_better, extra_a="", extra_b=""):
        ratio = (a / b if higher_better else b / a) if a and b else float("nan")
        rows.append((metric, f"{a:{fmt}} {extra_a}".strip(), f"{b:{fmt}} {extra_b}".strip(), f"{ratio:.2f}x"))
        print(f"  {metric}: ours {a:{fmt}}  hf {b:{fmt}}  ratio {ratio:.2f}", flush=True)

    t_start, whole = time.perf_counter(), CpuMeter()
    prec = "bf16 autocast" if args.bf16 else "fp32"
    tokens = args.batch * args.seq

    print("[1/6] peak memory of the training step (fresh subprocess per side)", flush=True)
    mem = {side: measure_memory(side, args) for side in ("ours", "hf")}
    row(f"train peak RSS increase, MiB ({prec})", mem["ours"]["increase_mib"], mem["hf"]["increase_mib"],
        ".0f", False)
    row("train peak RSS total, MiB", mem["ours"]["peak_mib"], mem["hf"]["peak_mib"], ".0f", False)
    mem = {side: measure_memory(side, args, recompute=True) for side in ("ours", "hf")}
    row(f"train peak RSS increase, MiB ({prec}, activation checkpointing on both sides)",
        mem["ours"]["increase_mib"], mem["hf"]["increase_mib"], ".0f", False)

    print("[2/6] loading both models", flush=True)
    ours, hf = load_ours(), load_hf()
    ours_base, hf_base = copy.deepcopy(ours), copy.deepcopy(hf)  # pristine bases for adapter loading
    vocab = ours.config.vocab_size
    prompt = torch.randint(100, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    n_new = args.new_tokens

    def decode_pair(label):
        got, sides = {}, {"ours": (decode_ours, ours.eval()), "hf": (decode_hf, hf.eval())}

        def fn(side):
            dec, m = sides[side]
            return n_new / timed(lambda: got.__setitem__(side, dec(m, prompt, n_new)))
        with torch.inference_mode():
            a, b = alternate(fn, args.decode_reps, 1)
        row(f"greedy decode tok/s, {label}", med(a), med(b), ".1f", True, spread(a), spread(b))
        assert len(got["ours"]) == n_new and len(got["hf"]) == n_new, "a side stopped early"
        return got

    print(f"[3/6] greedy decoding, batch 1, prompt {args.prompt}, {n_new} new tokens", flush=True)
    base_tok = decode_pair("base")
    notes.append(f"base greedy tokens identical on both sides: {base_tok['ours'] == base_tok['hf']}")

    print(f"[4/6] LoRA training step ({prec}), batch {args.batch} x {args.seq} tokens", flush=True)
    ours, hf = add_lora_ours(ours), add_lora_hf(hf)
    n_tr = (sum(p.numel() for p in ours.parameters() if p.requires_grad),
            sum(p.numel() for p in hf.parameters() if p.requires_grad))
    notes.append(f"trainable parameters: nemo_peft {n_tr[0]:,}, HF+peft {n_tr[1]:,}")
    batches = make_batches(args.warmup + args.steps, args.batch, args.seq, vocab)
    tr = {"ours": Trainer(ours, loss_ours, args.bf16, batches), "hf": Trainer(hf, loss_hf, args.bf16, batches)}
    train_meter = CpuMeter()
    a, b = alternate(lambda side: tr[side].step(), args.steps, args.warmup)
    train_load = train_meter.others()
    row(f"train tokens/s ({prec})", tokens / med(a), tokens / med(b), ".0f", True)
    row("train step time, s (median)", med(a), med(b), ".3f", False, spread(a), spread(b))
    notes.append(f"first-step loss (LoRA B=0, so equal to the base model's): nemo_peft {tr['ours'].losses[0]:.5f}, "
                 f"HF+peft {tr['hf'].losses[0]:.5f}")
    if args.profile:
        profile(tr)

    print("[5/6] decoding with LoRA unmerged; adapter save / load", flush=True)
    unmerged = decode_pair("LoRA unmerged")
    from peft import PeftModel
    tmp = tempfile.mkdtemp(prefix="bench_lora_")
    dirs, loaded, unmerge_t = {"ours": f"{tmp}/ours", "hf": f"{tmp}/hf"}, {}, {"ours": [], "hf": []}
    save = {"ours": lambda: ours.save_adapters(dirs["ours"]), "hf": lambda: hf.save_pretrained(dirs["hf"])}
    load = {"ours": lambda m: (m, m.load_adapters(dirs["ours"]))[0],
            "hf": lambda m: PeftModel.from_pretrained(m, dirs["hf"])}
    bases = {"ours": ours_base, "hf": hf_base}
    merge = {"ours": (ours.merge_adapters, ours.unmerge_adapters), "hf": (hf.merge_adapter, hf.unmerge_adapter)}

    def save_fn(side):
        shutil.rmtree(dirs[side], ignore_errors=True)
        return timed(save[side])

    def load_fn(side):
        m = copy.deepcopy(bases[side])  # a fresh base without the adapter (the copy is not timed)
        return timed(lambda: loaded.__setitem__(side, load[side](m)))

    def merge_fn(side):
        dt = timed(merge[side][0])
        unmerge_t[side].append(timed(merge[side][1]))
        return dt
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
    del loaded
    shutil.rmtree(tmp, ignore_errors=True)

    print("[6/6] merge / unmerge, then decoding merged", flush=True)
    a, b = alternate(merge_fn, args.merge_reps, 1)
    row("merge adapters, ms", 1e3 * med(a), 1e3 * med(b), ".1f", False)
    row("unmerge adapters, ms", 1e3 * med(unmerge_t["ours"]), 1e3 * med(unmerge_t["hf"]), ".1f", False)
    ours.merge_adapters()
    hf.merge_adapter()
    merged = decode_pair("LoRA merged")
    notes.append("merged greedy tokens == unmerged: nemo_peft "
                 f"{merged['ours'] == unmerged['ours']}, HF+peft {merged['hf'] == unmerged['hf']}")

    elapsed = time.perf_counter() - t_start
    notes.append(f"CPU used by other processes on this machine (background noise), in cores: "
                 f"{whole.others():.2f} over the whole run, {train_load:.2f} during training "
                 f"(of {os.cpu_count()} logical CPUs)")
    if whole.others() > 0.2:
        notes.append("WARNING: other processes used a sizeable share of the CPU during this run; absolute "
                     "numbers are inflated and noisy (alternation keeps the ratios roughly comparable). "
                     "Rerun on an idle machine for clean figures.")
    write_results(args, rows, notes, elapsed)


def profile(trainers):
    from torch.profiler import ProfilerActivity, profile as prof
    for name, tr in (("nemo_peft", trainers["ours"]), ("HF+peft", trainers["hf"])):
        tr.step()
        with prof(activities=[ProfilerActivity.CPU]) as p:
            tr.step()
        print(f"\n==== profile of one training step: {name} ====")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def machine_info(args):
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    import peft, transformers
    return (f"CPU: {cpu} ({os.cpu_count()} logical CPUs), torch threads: {args.threads}; "
            f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
            f"Python {platform.python_version()}")


def write_results(args, rows, notes, elapsed):
    head = ["| metric | nemo_peft | HF+peft | ratio (>1 = nemo_peft better) |", "|---|---|---|---|"]
    table = "\n".join(head + [f"| {m} | {a} | {b} | {r} |" for m, a, b, r in rows])
    settings = (f"model SmolLM2-135M-Instruct (GGUF, dequantized to fp32); LoRA r={RANK} alpha={ALPHA} dropout 0 on "
                f"{', '.join(TARGETS)}; AdamW lr {LR}; train batch {args.batch} x {args.seq} tokens, "
                f"{'bf16 autocast' if args.bf16 else 'fp32'}, {args.warmup} warmup + {args.steps} timed steps; "
                f"decode batch 1, prompt {args.prompt}, {args.new_tokens} new tokens, "
                f"{args.decode_reps} timed runs; save/load {args.io_reps}, merge {args.merge_reps} timed runs"
                f"{' (--quick)' if args.quick else ''}")
    text = (f"# LoRA benchmark: nemo_peft vs HF transformers + peft\n\n{table}\n\n"
            f"Ratio: throughput ours/HF; times, memory and sizes HF/ours. "
            f"Cells show the median and [min–max] of the timed runs where it varies.\n\n"
            f"- Machine: {machine_info(args)}\n- Settings: {settings}\n"
            + "".join(f"- {n}\n" for n in notes)
            + f"- Wall time of the whole benchmark: {elapsed:.0f} s ({time.strftime('%Y-%m-%d %H:%M')})\n")
    print("\n" + text)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, help_ in (("--steps", "timed training steps per side (default 10)"), ("--seq", "sequence length (256)"),
                        ("--warmup", "untimed warmup steps per side (2)"), ("--batch", "batch size (4)")):
        ap.add_argument(flag, type=int, default=None, help=help_)
    ap.add_argument("--bf16", action="store_true", help="train under torch.autocast('cpu', bfloat16) on both sides")
    ap.add_argument("--quick", action="store_true", help="small numbers: whole run < 3 min")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table of one training step")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    ap.add_argument("--out", default=os.path.join(HERE, "results.md"), help="markdown output file")
    ap.add_argument("--child", choices=["ours", "hf"], help=argparse.SUPPRESS)  # memory subprocess
    ap.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)  # child: activation checkpointing
    args = ap.parse_args()
    q = args.quick
    for k, v in dict(steps=2 if q else 10, warmup=1 if q else 2, seq=64 if q else 256, batch=4).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.prompt, args.new_tokens = 32, 32 if q else 128
    args.decode_reps, args.io_reps, args.merge_reps = (1, 2, 2) if q else (3, 5, 5)
    mem_child(args) if args.child else run(args)


if __name__ == "__main__":
    main()
