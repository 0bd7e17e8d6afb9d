"""What the benchmark scripts share: the two sides (nemo_peft and HF transformers + peft on the embedded
SmolLM2-135M-Instruct GGUF), the machine description, the background-load meter, timing and
median/spread helpers, and the markdown writer.

Scripts import it as ``benchmarks.common`` (each puts the checkout's root on ``sys.path``), and so do
the tests under ``tests/benchmarks``.
"""
from __future__ import annotations

import contextlib, os, platform, resource, statistics, time, warnings

import torch
import torch.nn.functional as F

warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation chatter

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR = 16, 32, 1e-4


# ---------------------------------------------------------------- the two sides
def load_ours():
    from nemo_peft.convert.gguf import gguf_default_path, load_gguf
    return load_gguf(gguf_default_path())[0]


def quiet_transformers():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_hf():
    from transformers import AutoModelForCausalLM
    from nemo_peft.convert.gguf import gguf_default_path
    quiet_transformers()
    p = gguf_default_path()
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p),
                                                dtype=torch.float32).eval()


def hf_twin(ours, attn_implementation: str = "sdpa"):
    """A transformers ``LlamaForCausalLM`` with ``ours``' weights (a Llama-family GPTModel), built in
    memory through our exporter's name mapping (``convert/hf_gpt.py``): no files, no download."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from nemo_peft.convert.hf_gpt import state_to_hf
    from nemo_peft.convert.hf_gpt_config import config_to_hf, export_layout
    quiet_transformers()
    cfg = ours.config
    sd = {k: v.detach() for k, v in ours.state_dict().items() if ".adapters." not in k}
    nonzero = {kind: any(bool(v.any()) for k, v in sd.items() if k.endswith(names))
               for kind, names in (("qkv", ("linear_qkv.bias",)), ("proj", ("linear_proj.bias",)),
                                   ("mlp", ("linear_fc1.bias", "linear_fc2.bias")))}
    layout = export_layout(cfg, nonzero, "llama")
    hf_cfg = {k: v for k, v in config_to_hf(cfg, "llama", layout).items() if k not in ("architectures", "torch_dtype")}
    dtype = ours.embedding.word_embeddings.weight.dtype
    model = LlamaForCausalLM(LlamaConfig(**hf_cfg, attn_implementation=attn_implementation)).to(dtype)
    missing, unexpected = model.load_state_dict(state_to_hf(sd, cfg, layout, "llama"), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # a tied head is not in the state dict
        raise RuntimeError(f"weights do not fit the HF twin: missing {missing}, unexpected {unexpected}")
    if cfg.share_embeddings_and_output_weights:
        model.tie_weights()
    return model.eval()


def add_lora_ours(model):
    from nemo_peft.peft.lora import LoraPEFTConfig
    model.add_adapter(LoraPEFTConfig(target_modules=TARGETS, dim=RANK, alpha=ALPHA, dropout=0.0))
    return model


def add_lora_hf(model):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, bias="none",
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def shifted_labels(ids):
    """Next-token labels as HF's ForCausalLMLoss builds them from labels=ids: shifted left, -100 at the end."""
    return F.pad(ids[:, 1:], (0, 1), value=-100)


def loss_ours(model, ids):
    # Next-token loss over every position through the model's own training loss: the LM head in
    # chunks on the labelled positions, no full logits.
    return model.lm_loss(model(ids, return_hidden=True), shifted_labels(ids))


def loss_hf(model, ids):
    return model(input_ids=ids, labels=ids, use_cache=False).loss  # no KV cache in training, like ours


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One LoRA training step: forward + loss, backward, AdamW step, zero_grad.

    ``step()`` takes the next of ``batches`` in turn, ``step(batch)`` the one given; ``loss_fn(model,
    batch)``. ``autocast``: a device type ("cpu", "cuda") to run forward and loss under bf16 autocast,
    or None; ``fused``: AdamW's fused kernel (``torch.optim.AdamW(fused=True)``)."""

    def __init__(self, model, loss_fn, batches=(), autocast: str | None = None, fused: bool = False):
        self.model, self.loss_fn, self.batches, self.i = model.train(), loss_fn, list(batches), 0
        self.opt = torch.optim.AdamW(trainable(model), lr=LR, **({"fused": True} if fused else {}))
        self.ctx = (lambda: torch.autocast(autocast, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
        self.device = next(model.parameters()).device
        self.losses = []
        self.faults, self.sys_s = [], []  # per step: minor page faults, kernel CPU seconds (fresh memory costs both)

    def step(self, batch=None) -> float:
        if batch is None:
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
        sync(self.device)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        with self.ctx():
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        sync(self.device)
        dt = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.faults.append(r1.ru_minflt - r0.ru_minflt)
        self.sys_s.append(r1.ru_stime - r0.ru_stime)
        self.losses.append(loss.item())
        return dt

    def fault_note(self) -> str:
        """Median minor page faults and kernel CPU seconds of this trainer's steps."""
        return f"{med(self.faults):,.0f} page faults and {med(self.sys_s):.2f} s of kernel CPU per step"


def make_batches(n, batch, seq, vocab, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g).to(device) for _ in range(n)]


# ---------------------------------------------------------------- timing
med = statistics.median


def spread(xs):
    return f"[{min(xs):.3g}–{max(xs):.3g}]" if len(xs) > 1 else ""


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


# ---------------------------------------------------------------- machine
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
        return max(0.0, (busy - self.busy0) - (own - self.own0)) / max(time.perf_counter() - self.t0, 1e-9)


def _cpuinfo_field(name: str) -> str | None:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        return next((l.split(":", 1)[1].strip() for l in f if l.split(":", 1)[0].strip() == name), None)
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


SIMD_PREFIXES, SIMD_EXACT = ("avx", "amx"), ("fma", "f16c")


def simd_flags() -> str:
    """The vector-unit flags that decide matmul speed: avx, avx2, fma, f16c, avx512*, amx*."""
    flags = (_cpuinfo_field("flags") or "").split()
    keep = [x for x in flags if x.startswith(SIMD_PREFIXES) or x in SIMD_EXACT]
    return " ".join(sorted(keep)) or "unknown"


def versions() -> str:
    out = [f"torch {torch.__version__}"]
    for name in ("transformers", "peft"):
        with contextlib.suppress(ImportError):
            out.append(f"{name} {__import__(name).__version__}")
    return ", ".join(out + [f"Python {platform.python_version()}"])


def machine_info(args) -> str:
    return (f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), torch threads: {args.threads}; "
            f"SIMD flags: {simd_flags()}; {versions()}")


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def weights_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))


# ---------------------------------------------------------------- results
class Rows:
    """The ours / HF / ratio table; ``add`` prints each row as it comes."""

    def __init__(self):
        self.rows = []

    def add(self, metric, a, b, fmt, higher_better, extra_a="", extra_b="", unit=""):
        ratio = (a / b if higher_better else b / a) if a and b else float("nan")
        self.rows.append((metric, f"{a:{fmt}}{unit} {extra_a}".strip(), f"{b:{fmt}}{unit} {extra_b}".strip(),
                          f"{ratio:.2f}x"))
        print(f"  {metric}: ours {a:{fmt}}{unit}  hf {b:{fmt}}{unit}  ratio {ratio:.2f}", flush=True)

    def markdown(self, heads=("metric", "nemo_peft", "HF+peft", "ratio (>1 = nemo_peft better)")):
        return md_table(heads, self.rows)


def md_table(heads, rows) -> str:
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def bullets(notes) -> str:
    return "".join(f"- {n}\n" for n in notes)


def background_notes(whole: CpuMeter, during: float | None = None, label: str = "training") -> list[str]:
    busy = whole.others()
    notes = [f"CPU used by other processes on this machine (background noise), in cores: {busy:.2f} over the "
             f"whole run" + (f", {during:.2f} during {label}" if during is not None else "")
             + f" (of {os.cpu_count()} logical CPUs)"]
    if busy > 0.2 or (during or 0) > 0.2:
        notes.append("WARNING: other processes used a sizeable share of the CPU during this run; absolute numbers "
                     "are inflated and noisy (alternation keeps the ratios roughly comparable). Rerun on an idle "
                     "machine for clean figures.")
    return notes


def write_text(path: str, text: str) -> None:
    """Print the report and write it to ``path``."""
    print("\n" + text)
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
