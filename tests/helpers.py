"""Plain helpers shared by the test modules (fixtures stay in the conftest files).

Test modules import helpers from here, never from one another.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from nemo_peft.models.gpt import GPTConfig, GPTModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAMILIES = {
    # Llama-style: RoPE, RMSNorm, SwiGLU, GQA, tied embeddings
    "llama": dict(vocab_size=97, hidden_size=48, num_layers=3, num_attention_heads=6, num_query_groups=2,
                  ffn_hidden_size=80),
    # GPT-2 style: learned positions, LayerNorm, GELU (tanh), biases, tied
    "gpt2": dict(vocab_size=97, hidden_size=48, num_layers=3, num_attention_heads=4, ffn_hidden_size=96,
                 position_embedding_type="learned_absolute", normalization="LayerNorm",
                 activation="gelu_tanh", gated_linear_unit=False, add_bias_linear=True, add_qkv_bias=True,
                 max_position_embeddings=64),
    # Qwen2 style: QKV bias only, untied output layer
    "qwen2": dict(vocab_size=97, hidden_size=48, num_layers=2, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=64, add_qkv_bias=True, share_embeddings_and_output_weights=False),
}

# token ids for the tiny GPT families (vocabulary 97)
IDS = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))


def make_model(family="llama", seed=0, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel(GPTConfig(**{**FAMILIES[family], **overrides}))
    return model.eval()


def peaky_model(family="llama", seed=0, factor=8, **overrides) -> GPTModel:
    """make_model with every weight matrix scaled by ``factor``: GPTModel's 0.02-std init gives near-uniform
    logits, degenerate greedy continuations and little to learn in a few steps."""
    model = make_model(family, seed, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(factor)
    return model


def _is_multiplicative(name):
    """An IA3 scale or a bottleneck adapter's norm: identity at 1, not at 0."""
    return name.endswith("scale") or ".norm." in name


def randomize_adapters(model, seed=0, std=0.1, *, marker=".adapters.", name=None, add=False, unit_scales=False,
                       magnitude_jitter=None):
    """Move adapter weights off their (often identity) init, so that tests see their effect.

    Every parameter whose name contains ``marker`` (``.adapters.<name>.`` when ``name`` is given: one adapter
    only) draws ``noise = randn(shape) * std`` from one generator seeded with ``seed``, in ``named_parameters``
    order, and becomes ``noise``; with ``add`` it becomes ``p + noise`` (keeps the init: IA3 around 1, LoRA's A);
    with ``unit_scales`` IA3 scales and adapter norms become ``1 + noise``. ``magnitude_jitter`` (DoRA) then
    multiplies every ``.magnitude`` by ``1 + magnitude_jitter * randn`` from a second generator (``seed + 1``),
    so that m / ‖W + sBA‖ != 1. ``model`` may be any module (e.g. a peft model, with ``marker="lora_"``).
    """
    if name is not None:
        marker = f".adapters.{name}."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if marker not in n:
                continue
            noise = torch.randn(p.shape, generator=g) * std
            if add:
                p.add_(noise)
            else:
                p.copy_(1 + noise if unit_scales and _is_multiplicative(n) else noise)
        if magnitude_jitter is not None:
            g = torch.Generator().manual_seed(seed + 1)
            for n, p in model.named_parameters():
                if n.endswith(".magnitude"):
                    p.mul_(1 + magnitude_jitter * torch.randn(p.shape, generator=g))
    return model


def randomize_base(model, seed=0, std=0.15, stds=None):
    """Non-trivial base weights everywhere, for parity with transformers: a norm's weight (a name with
    "norm", ".ln_" or "ln_f") uniform in [0.5, 1.5), its bias N(0, 0.1²); a parameter whose name contains a
    key of ``stds`` N(0, stds[key]²) (e.g. T5's strong relative position bias); all else N(0, std²).
    One generator seeded with ``seed``, in ``named_parameters`` order. Returns the model in eval mode."""
    stds = stds or {}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name or "ln_f" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if name.endswith("weight")
                        else torch.randn(p.shape, generator=g) * 0.1)
            else:
                scale = next((s for key, s in stds.items() if key in name), std)
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def assert_only_adapters_get_grads(model):
    """After a backward pass: exactly the adapter parameters train, and each got a non-zero gradient."""
    for n, p in model.named_parameters():
        is_adapter = ".adapters." in n
        assert p.requires_grad == is_adapter, n
        if is_adapter:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def train_next_token(model, steps, lr=1e-2, ids=IDS):
    """AdamW on the trainable parameters, next-token cross-entropy on ``ids``: the loss of every step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def no_cache_greedy(model, ids, n):
    """Greedy decoding of one row by a full forward per token (the reference for the KV cache)."""
    out = []
    for _ in range(n):
        tok = model(ids)[:, -1].argmax(-1)
        out.append(int(tok))
        ids = torch.cat([ids, tok[:, None]], 1)
    return out


# ---- tiny random transformers T5 checkpoints (the hf_t5_checkpoint fixture of tests/convert builds them)

_T5_SMALL = dict(vocab_size=101, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, relative_attention_max_distance=20, decoder_start_token_id=0)
# name -> (transformers config class name, config kwargs, separate random lm_head)
HF_T5_CASES = {
    # original T5: relu, tied embeddings, d_model**-0.5 before the tied head; 3 decoder layers
    "t5_relu_tied": ("T5Config", dict(_T5_SMALL, num_decoder_layers=3), False),
    # T5 v1.1 / Flan-T5: gated-gelu, untied head (no scaling), num_heads * d_kv != d_model
    "t5v1_1_gated_gelu_untied": ("T5Config", dict(_T5_SMALL, d_kv=12, d_ff=48, feed_forward_proj="gated-gelu",
                                                  tie_word_embeddings=False), True),
    # transformers 5 writes tie_word_embeddings=True with scale_decoder_outputs=False and no lm_head
    "t5_tied_unscaled": ("T5Config", dict(_T5_SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
                         False),
    "mt5_untied": ("MT5Config", dict(_T5_SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False), True),
}
# T5's base weights for randomize_base: a strong relative position bias, the shared embedding at 0.5
T5_STDS = {"relative_attention_bias": 1.0, "shared.weight": 0.5}


# ---- the recipes through Hydra (examples/*.py in a subprocess)

def run_example(script, *overrides, cwd):
    cmd = [sys.executable, os.path.join(ROOT, "examples", script), *overrides]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)


def predict(model, adapter, tiny_task, tmp_path):
    """generate.py on the tiny task's test split: (the finished process, the rows it wrote)."""
    preds = tmp_path / "preds.jsonl"
    gen = run_example("generate.py", f"model={model}", f"adapter_path={adapter}", f"output_file={preds}",
                      f"data.predict_ds.file_names=[{tiny_task['test']}]", "trainer.enable_progress_bar=false",
                      cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    return gen, [json.loads(line) for line in open(preds)]


def onednn_linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's linear, [.., in] x [out, in]^T, which torch's FlopCounterMode does not know."""
    return 2 * torch.Size(x_shape[:-1]).numel() * w_shape[0] * w_shape[1]


# FlopCounterMode(custom_mapping=ONEDNN_FLOPS) counts our training products on AVX-512 CPUs (modules/linear.py)
ONEDNN_FLOPS = ({torch.ops.mkldnn._linear_pointwise: onednn_linear_flop}
                if hasattr(torch.ops.mkldnn, "_linear_pointwise") else {})
