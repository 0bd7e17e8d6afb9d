"""Hugging Face checkpoint directories <-> ``GPTModel``: gpt2, llama (SmolLM/SmolLM2), mistral, qwen2.

``load_hf(dir)`` reads ``config.json`` + ``model.safetensors`` (or a sharded
``model.safetensors.index.json``) and, when present, ``tokenizer.json`` with the special
ids of ``tokenizer_config.json`` / ``special_tokens_map.json`` / ``generation_config.json``.
``save_hf(model, dir)`` writes a directory that ``transformers.AutoModelForCausalLM`` and
``AutoTokenizer`` load with the same outputs. transformers itself is not needed for either.

Weight layouts: HF keeps q/k/v (and gate/up) as separate matrices; ours are fused as
[q | k | v] and [gate | up], so conversion is a concat / split. GPT-2 stores Conv1D
weights as [in, out] (transposed vs ``nn.Linear``) with q/k/v already fused as [q | k | v].
"""
from __future__ import annotations

import os
import re

import torch

from nemo_peft.convert.hf_dir import load_tokenizer, read_hf_config, read_weights, special_ids, write_checkpoint
from nemo_peft.convert.hf_gpt_config import config_to_hf, export_layout, hf_to_config, infer_model_type
from nemo_peft.convert.instantiate import instantiate
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.modules.rope import rope_inv_freq

_GPT2_LAYER = (  # (ours, theirs, Conv1D weight stored [in, out])
    ("input_layernorm", "ln_1", False), ("self_attention.linear_qkv", "attn.c_attn", True),
    ("self_attention.linear_proj", "attn.c_proj", True), ("pre_mlp_layernorm", "ln_2", False),
    ("mlp.linear_fc1", "mlp.c_fc", True), ("mlp.linear_fc2", "mlp.c_proj", True),
)
_IGNORED = {  # tensors some checkpoints carry that are not weights (causal-mask buffers, RoPE caches)
    "gpt2": re.compile(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias"),
    "llama": re.compile(r".*rotary_emb\.inv_freq"),
}


# --- weights: HF names -> ours -------------------------------------------------------------

def hf_to_state(tensors: dict, cfg: GPTConfig, layout: dict, model_type: str, source: str) -> dict:
    t = dict(tensors)

    def take(name):
        if name not in t:
            raise ValueError(f"{source}: tensor {name!r} is missing; the weights do not fit its "
                             f"config.json for a {model_type} model.")
        return t.pop(name)

    sd = {}
    if model_type == "gpt2":
        p = "transformer." if "transformer.wte.weight" in t else ""
        sd["embedding.word_embeddings.weight"] = take(p + "wte.weight")
        sd["embedding.position_embeddings.weight"] = take(p + "wpe.weight")
        for i in range(cfg.num_layers):
            h, o = f"{p}h.{i}.", f"decoder.layers.{i}."
            for ours, theirs, conv in _GPT2_LAYER:
                w = take(f"{h}{theirs}.weight")
                sd[f"{o}{ours}.weight"] = w.t().contiguous() if conv else w
                sd[f"{o}{ours}.bias"] = take(f"{h}{theirs}.bias")
        sd["decoder.final_layernorm.weight"] = take(p + "ln_f.weight")
        sd["decoder.final_layernorm.bias"] = take(p + "ln_f.bias")
    else:
        p = "model." if "model.embed_tokens.weight" in t else ""
        sd["embedding.word_embeddings.weight"] = take(p + "embed_tokens.weight")
        for i in range(cfg.num_layers):
            h, o = f"{p}layers.{i}.", f"decoder.layers.{i}."
            a, m = h + "self_attn.", h + "mlp."
            sd[o + "input_layernorm.weight"] = take(h + "input_layernorm.weight")
            sd[o + "pre_mlp_layernorm.weight"] = take(h + "post_attention_layernorm.weight")
            sd[o + "self_attention.linear_qkv.weight"] = torch.cat([take(f"{a}{x}_proj.weight") for x in "qkv"])
            if layout["qkv_bias"]:
                sd[o + "self_attention.linear_qkv.bias"] = torch.cat([take(f"{a}{x}_proj.bias") for x in "qkv"])
            sd[o + "self_attention.linear_proj.weight"] = take(a + "o_proj.weight")
            sd[o + "mlp.linear_fc1.weight"] = torch.cat([take(m + "gate_proj.weight"), take(m + "up_proj.weight")])
            sd[o + "mlp.linear_fc2.weight"] = take(m + "down_proj.weight")
            if cfg.add_bias_linear:  # one flag covers both: the one the checkpoint lacks is zero
                zeros = sd[o + "input_layernorm.weight"].new_zeros
                sd[o + "self_attention.linear_proj.bias"] = (
                    take(a + "o_proj.bias") if layout["proj_bias"] else zeros(cfg.hidden_size))
                sd[o + "mlp.linear_fc1.bias"] = (torch.cat([take(m + "gate_proj.bias"), take(m + "up_proj.bias")])
                                                 if layout["mlp_bias"] else zeros(2 * cfg.ffn_hidden_size))
                sd[o + "mlp.linear_fc2.bias"] = (
                    take(m + "down_proj.bias") if layout["mlp_bias"] else zeros(cfg.hidden_size))
        sd["decoder.final_layernorm.weight"] = take(p + "norm.weight")
    if cfg.share_embeddings_and_output_weights:
        t.pop("lm_head.weight", None)  # transformers ties it to the embeddings anyway
    else:
        sd["output_layer.weight"] = take("lm_head.weight")
    ignore = _IGNORED["gpt2" if model_type == "gpt2" else "llama"]
    left = sorted(k for k in t if not ignore.fullmatch(k))
    if left:
        raise ValueError(f"{source}: unexpected tensors {left[:5]}{'...' if len(left) > 5 else ''} for a "
                         f"{model_type} model with this config.json (an unsupported variant of the architecture?).")
    return sd


# --- weights: ours -> HF names -------------------------------------------------------------

def state_to_hf(sd: dict, cfg: GPTConfig, layout: dict, model_type: str) -> dict:
    out = {}
    get = lambda k, n: sd[k] if k in sd else sd["decoder.final_layernorm.weight"].new_zeros(n)  # noqa: E731
    h = cfg.hidden_size
    if model_type == "gpt2":
        out["transformer.wte.weight"] = sd["embedding.word_embeddings.weight"]
        out["transformer.wpe.weight"] = sd["embedding.position_embeddings.weight"]
        widths = {"self_attention.linear_qkv": 3 * h, "mlp.linear_fc1": cfg.ffn_hidden_size}
        for i in range(cfg.num_layers):
            o = f"decoder.layers.{i}."
            for ours, theirs, conv in _GPT2_LAYER:
                w = sd[f"{o}{ours}.weight"]
                out[f"transformer.h.{i}.{theirs}.weight"] = w.t() if conv else w
                out[f"transformer.h.{i}.{theirs}.bias"] = get(f"{o}{ours}.bias", widths.get(ours, h))
        out["transformer.ln_f.weight"] = sd["decoder.final_layernorm.weight"]
        out["transformer.ln_f.bias"] = sd["decoder.final_layernorm.bias"]
    else:
        q, kv, f = cfg.num_attention_heads * cfg.head_dim, cfg.num_query_groups * cfg.head_dim, cfg.ffn_hidden_size
        out["model.embed_tokens.weight"] = sd["embedding.word_embeddings.weight"]
        for i in range(cfg.num_layers):
            o, a, m = f"decoder.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
            out[f"model.layers.{i}.input_layernorm.weight"] = sd[o + "input_layernorm.weight"]
            out[f"model.layers.{i}.post_attention_layernorm.weight"] = sd[o + "pre_mlp_layernorm.weight"]
            parts = {"weight": sd[o + "self_attention.linear_qkv.weight"]}
            if layout["qkv_bias"]:
                parts["bias"] = get(o + "self_attention.linear_qkv.bias", q + 2 * kv)
            for kind, x in parts.items():
                for name, piece in zip("qkv", x.split([q, kv, kv])):
                    out[f"{a}{name}_proj.{kind}"] = piece
            out[a + "o_proj.weight"] = sd[o + "self_attention.linear_proj.weight"]
            if layout["proj_bias"]:
                out[a + "o_proj.bias"] = get(o + "self_attention.linear_proj.bias", h)
            out[m + "gate_proj.weight"], out[m + "up_proj.weight"] = sd[o + "mlp.linear_fc1.weight"].split([f, f])
            out[m + "down_proj.weight"] = sd[o + "mlp.linear_fc2.weight"]
            if layout["mlp_bias"]:
                out[m + "gate_proj.bias"], out[m + "up_proj.bias"] = get(o + "mlp.linear_fc1.bias", 2 * f).split([f, f])
                out[m + "down_proj.bias"] = get(o + "mlp.linear_fc2.bias", h)
        out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if not cfg.share_embeddings_and_output_weights:
        out["lm_head.weight"] = sd["output_layer.weight"]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _nonzero_biases(sd: dict) -> dict:
    def nz(*suffixes):
        return any(bool(v.any()) for k, v in sd.items() if k.endswith(suffixes))
    return {"qkv": nz("linear_qkv.bias"), "proj": nz("linear_proj.bias"),
            "mlp": nz("linear_fc1.bias", "linear_fc2.bias")}


def fill_rope(model: GPTModel) -> None:
    """RoPE frequencies are a non-persistent fp32 buffer: computed, never loaded or cast."""
    cfg = model.config
    if model.rotary is not None:
        model.rotary.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rotary_base, cfg.rope_scaling)


# --- entry points ---------------------------------------------------------------------------

def load_hf(directory: str, dtype: torch.dtype = torch.float32) -> tuple[GPTModel, Tokenizer | None]:
    """(model, tokenizer or None) from a local Hugging Face checkpoint directory, weights cast to ``dtype``."""
    directory = os.path.expanduser(str(directory))
    hf = read_hf_config(directory)
    cfg, layout = hf_to_config(hf, source=os.path.join(directory, "config.json"))
    state = hf_to_state(read_weights(directory), cfg, layout, hf["model_type"], directory)
    tok = load_tokenizer(directory)
    ids, all_eos = special_ids(directory, hf, tok.backend if tok else None)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    if tok is not None:
        tok.bos_id, tok.eos_id, tok.pad_id = ids["bos"], ids["eos"], ids["pad"]
    cfg.extra = {"source": "hf", "path": os.path.abspath(directory), "model_type": hf["model_type"],
                 **({"eos_token_ids": [int(i) for i in all_eos]} if all_eos else {})}
    return instantiate(GPTModel, cfg, state, directory, dtype, after_load=fill_rope).eval(), tok


def save_hf(model: GPTModel, directory: str, tokenizer: Tokenizer | None = None, model_type: str | None = None) -> None:
    """Write ``model`` as a transformers checkpoint (config.json, generation_config.json,
    model.safetensors, and tokenizer files when ``tokenizer`` is given).

    ``model_type`` defaults to the family the model was loaded from (``config.extra``), else
    the closest one. Only base weights are written: merge adapters first to export them.
    """
    cfg = model.config
    model_type = model_type or infer_model_type(cfg)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if ".adapters." not in k}
    layout = export_layout(cfg, _nonzero_biases(sd), model_type)
    tensors = state_to_hf(sd, cfg, layout, model_type)
    dtype = str(model.embedding.word_embeddings.weight.dtype).removeprefix("torch.")
    hf = config_to_hf(cfg, model_type, layout, dtype)
    if tokenizer is not None:
        for k, tid in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id)):
            if hf[f"{k}_token_id"] is None:
                hf[f"{k}_token_id"] = tid
    eos = cfg.extra.get("eos_token_ids") or hf["eos_token_id"]
    generation = {"bos_token_id": hf["bos_token_id"], "eos_token_id": eos, "pad_token_id": hf["pad_token_id"]}
    write_checkpoint(directory, tensors, hf, generation, tokenizer, cfg.max_position_embeddings)
