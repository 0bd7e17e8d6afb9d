"""Hugging Face ``config.json`` <-> ``GPTConfig`` for the gpt2, llama, mistral and qwen2 families.

Every field that changes the math is mapped; a value this model cannot reproduce raises
``ValueError`` naming the field, instead of loading a model that computes something else.
Bias layout: our model has one flag for QKV biases and one for the output-projection and
MLP biases together, so a checkpoint with only one of the latter two gets zero biases for
the other (exact), and export writes a bias only where the family or a non-zero value needs it.
"""
from __future__ import annotations

from nemo_peft.models.gpt import GPTConfig

SUPPORTED = ("gpt2", "llama", "mistral", "qwen2")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                 "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# transformers activation names -> ours
ACT_IN = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
          "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ROPE_TYPES = ("default", "linear", "llama3", "dynamic")
# family defaults of transformers' config classes, for fields a config.json may omit
_DEFAULTS = {
    "llama": {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "mistral": {"max_position_embeddings": 4096 * 32, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                "sliding_window": 4096},
    "qwen2": {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
}


def _unsupported(field: str, value, supported: str, source: str):
    return ValueError(f"{source}: config field {field}={value!r} is not supported ({supported}); "
                      "loading it would silently change the model's outputs.")


def hf_to_config(hf: dict, source: str = "config.json") -> tuple[GPTConfig, dict]:
    """(GPTConfig, layout) from a parsed HF ``config.json``.

    ``layout`` says which bias tensors the checkpoint holds: ``qkv_bias``, ``proj_bias``, ``mlp_bias``.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported; supported model types: "
                         f"{', '.join(SUPPORTED)} (SmolLM/SmolLM2 checkpoints are 'llama').")
    if hf.get("quantization_config"):
        raise _unsupported("quantization_config", hf["quantization_config"].get("quant_method", "?"),
                           "only unquantized checkpoints can be read", source)
    if model_type == "gpt2":
        return _gpt2_config(hf, source)
    return _llama_like_config(hf, model_type, source)


def _gpt2_config(hf: dict, source: str) -> tuple[GPTConfig, dict]:
    checks = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
              "reorder_and_upcast_attn": False, "add_cross_attention": False}
    for name, want in checks.items():
        if bool(hf.get(name, want)) != want:
            raise _unsupported(name, hf[name], f"only {name}={want} is supported", source)
    act = hf.get("activation_function", "gelu_new")
    if act not in ACT_IN:
        raise _unsupported("activation_function", act, f"supported: {', '.join(ACT_IN)}", source)
    hidden, heads = int(hf.get("n_embd", 768)), int(hf.get("n_head", 12))
    if hidden % heads:
        raise ValueError(f"{source}: n_embd={hidden} is not a multiple of n_head={heads}.")
    cfg = GPTConfig(
        vocab_size=int(hf.get("vocab_size", 50257)), hidden_size=hidden, num_layers=int(hf.get("n_layer", 12)),
        num_attention_heads=heads, num_query_groups=heads,
        ffn_hidden_size=int(hf.get("n_inner") or 4 * hidden),
        max_position_embeddings=int(hf.get("n_positions", 1024)), position_embedding_type="learned_absolute",
        normalization="LayerNorm", layernorm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation=ACT_IN[act], gated_linear_unit=False, add_bias_linear=True, add_qkv_bias=True,
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", True)),
        **_special_ids(hf),
    )
    return cfg, {"qkv_bias": True, "proj_bias": True, "mlp_bias": True}


def parse_rope(hf: dict, source: str) -> tuple[float, dict | None]:
    """(theta, our rope_scaling) from old-style ``rope_theta``/``rope_scaling`` or v5 ``rope_parameters``."""
    rp = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    if not isinstance(rp, dict) or any(isinstance(v, dict) for v in rp.values()):
        raise _unsupported("rope_parameters", rp, "per-layer-type RoPE parameters are not supported", source)
    theta = float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))
    partial = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial is not None and float(partial) != 1.0:
        raise _unsupported("partial_rotary_factor", partial, "only full rotary embeddings (1.0)", source)
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise _unsupported("rope_scaling.rope_type", kind, f"supported: {', '.join(ROPE_TYPES)}", source)
    if kind == "default":
        return theta, None
    if rp.get("factor") is None:
        raise ValueError(f"{source}: rope scaling {kind!r} needs a 'factor'; got {rp}.")
    factor = float(rp["factor"])
    if kind == "linear":
        return theta, {"rope_type": "linear", "factor": factor}
    max_pos = int(hf.get("max_position_embeddings", 2048))
    if kind == "dynamic":  # transformers scales relative to max_position_embeddings
        return theta, {"rope_type": "dynamic", "factor": factor, "original_max_position_embeddings": max_pos}
    return theta, {"rope_type": "llama3", "factor": factor,
                   "low_freq_factor": float(rp.get("low_freq_factor", 1.0)),
                   "high_freq_factor": float(rp.get("high_freq_factor", 4.0)),
                   "original_max_position_embeddings": int(rp.get("original_max_position_embeddings", max_pos))}


def _sliding_window(hf: dict, model_type: str, layers: int, max_pos: int, source: str) -> int | None:
    if model_type == "llama":
        return None
    if model_type == "mistral":
        window = hf.get("sliding_window", _DEFAULTS["mistral"]["sliding_window"])
        sliding_layers = layers if window is not None else 0
    else:  # qwen2: the window applies from layer max_window_layers on, and only with use_sliding_window
        window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
        types = hf.get("layer_types") or [
            "sliding_attention" if window is not None and i >= int(hf.get("max_window_layers", 28))
            else "full_attention" for i in range(layers)]
        sliding_layers = sum(t == "sliding_attention" for t in types) if window is not None else 0
    if not sliding_layers:
        return None
    if int(window) < 1:
        raise _unsupported("sliding_window", window, "it must be >= 1 or null", source)
    if sliding_layers != layers:
        if int(window) >= max_pos:  # cannot take effect within the model's context
            return None
        raise _unsupported("use_sliding_window/max_window_layers", f"{sliding_layers} of {layers} layers",
                           "a sliding window must apply to all layers or none", source)
    return int(window)


def _llama_like_config(hf: dict, model_type: str, source: str) -> tuple[GPTConfig, dict]:
    d = _DEFAULTS[model_type]
    act = hf.get("hidden_act", "silu")
    if act not in ACT_IN:
        raise _unsupported("hidden_act", act, f"supported: {', '.join(ACT_IN)}", source)
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or hidden // heads
    if not hf.get("head_dim") and hidden % heads:
        raise ValueError(f"{source}: hidden_size={hidden} is not a multiple of num_attention_heads={heads} "
                         "and no head_dim is given.")
    layers = int(hf["num_hidden_layers"])
    max_pos = int(hf.get("max_position_embeddings", d["max_position_embeddings"]))
    theta, scaling = parse_rope({**hf, "max_position_embeddings": max_pos}, source)
    if model_type == "llama":
        layout = {"qkv_bias": bool(hf.get("attention_bias", False)), "proj_bias": bool(hf.get("attention_bias", False)),
                  "mlp_bias": bool(hf.get("mlp_bias", False))}
    else:
        layout = {"qkv_bias": model_type == "qwen2", "proj_bias": False, "mlp_bias": False}
    cfg = GPTConfig(
        vocab_size=int(hf.get("vocab_size", 32000)), hidden_size=hidden, num_layers=layers,
        num_attention_heads=heads, num_query_groups=int(hf.get("num_key_value_heads") or heads),
        kv_channels=int(head_dim) if int(head_dim) != hidden // heads else None,
        ffn_hidden_size=int(hf["intermediate_size"]), max_position_embeddings=max_pos,
        position_embedding_type="rope", rotary_base=theta, rope_scaling=scaling,
        normalization="RMSNorm", layernorm_epsilon=float(hf.get("rms_norm_eps", d["rms_norm_eps"])),
        activation=ACT_IN[act], gated_linear_unit=True,
        add_bias_linear=layout["proj_bias"] or layout["mlp_bias"], add_qkv_bias=layout["qkv_bias"],
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", d["tie_word_embeddings"])),
        sliding_window=_sliding_window(hf, model_type, layers, max_pos, source),
        **_special_ids(hf),
    )
    return cfg, layout


def _special_ids(d: dict) -> dict:
    out = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = d.get(name)
        out[name] = int(v[0]) if isinstance(v, list) and v else (int(v) if isinstance(v, int) else None)
    return out


# --- export --------------------------------------------------------------------------------

def infer_model_type(cfg: GPTConfig) -> str:
    """The HF family to export to: the recorded source family, else the closest match."""
    recorded = cfg.extra.get("model_type") or cfg.extra.get("gguf_arch")
    if recorded in SUPPORTED:
        return recorded
    if cfg.position_embedding_type == "learned_absolute":
        return "gpt2"
    if cfg.sliding_window is not None:
        return "mistral"
    return "qwen2" if cfg.add_qkv_bias and not cfg.add_bias_linear else "llama"


def export_layout(cfg: GPTConfig, nonzero: dict, model_type: str) -> dict:
    """Which biases the HF checkpoint gets; raises if ``model_type`` cannot represent the model.

    ``nonzero`` says whether our qkv / proj / mlp biases exist with a non-zero entry.
    """
    if model_type not in SUPPORTED:
        raise ValueError(f"Cannot export to model_type {model_type!r}; supported: {', '.join(SUPPORTED)}.")
    problems = []
    if model_type == "gpt2":
        if cfg.position_embedding_type != "learned_absolute" or cfg.normalization != "LayerNorm":
            problems.append("gpt2 needs learned absolute positions and LayerNorm")
        if cfg.gated_linear_unit:
            problems.append("gpt2 has no gated MLP")
        if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size or cfg.num_query_groups != cfg.num_attention_heads:
            problems.append("gpt2 needs head_dim = hidden/heads and no GQA")
        if cfg.sliding_window is not None:
            problems.append("gpt2 has no sliding window")
        layout = {"qkv_bias": True, "proj_bias": True, "mlp_bias": True}
    else:
        if cfg.position_embedding_type != "rope" or cfg.normalization != "RMSNorm" or not cfg.gated_linear_unit:
            problems.append(f"{model_type} needs RoPE, RMSNorm and a gated MLP")
        if model_type == "llama":
            attn = nonzero["qkv"] or nonzero["proj"]
            layout = {"qkv_bias": attn, "proj_bias": attn, "mlp_bias": nonzero["mlp"]}
            if cfg.sliding_window is not None:
                problems.append("llama has no sliding window (export as mistral)")
        else:
            layout = {"qkv_bias": model_type == "qwen2", "proj_bias": False, "mlp_bias": False}
            if nonzero["proj"] or nonzero["mlp"] or (model_type == "mistral" and nonzero["qkv"]):
                problems.append(f"{model_type} has no {'QKV/' if model_type == 'mistral' else ''}"
                                "output-projection/MLP biases but this model's are non-zero (export as llama)")
    if cfg.activation not in ("silu", "gelu", "gelu_tanh", "relu"):
        problems.append(f"activation {cfg.activation!r} has no transformers name")
    if problems:
        raise ValueError(f"This model cannot be exported as model_type {model_type!r}: {'; '.join(problems)}.")
    return layout


def config_to_hf(cfg: GPTConfig, model_type: str, layout: dict, dtype: str = "float32") -> dict:
    """The ``config.json`` dict; readable by transformers 4.45+ (old-style rope keys) and 5.x."""
    act_out = {"silu": "silu", "gelu": "gelu", "relu": "relu",
               "gelu_tanh": "gelu_new" if model_type == "gpt2" else "gelu_pytorch_tanh"}[cfg.activation]
    common = {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type, "vocab_size": cfg.vocab_size,
              "tie_word_embeddings": cfg.share_embeddings_and_output_weights, "torch_dtype": dtype,
              "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
              "use_cache": True}
    if model_type == "gpt2":
        return {**common, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_attention_heads,
                "n_inner": cfg.ffn_hidden_size, "n_positions": cfg.max_position_embeddings,
                "n_ctx": cfg.max_position_embeddings, "activation_function": act_out,
                "layer_norm_epsilon": cfg.layernorm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    max_pos = cfg.max_position_embeddings
    scaling = dict(cfg.rope_scaling) if cfg.rope_scaling else None
    if scaling and scaling.get("rope_type", scaling.get("type")) == "dynamic":
        max_pos = int(scaling.pop("original_max_position_embeddings"))  # transformers scales relative to it
    out = {**common, "hidden_size": cfg.hidden_size, "intermediate_size": cfg.ffn_hidden_size,
           "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
           "num_key_value_heads": cfg.num_query_groups, "head_dim": cfg.head_dim, "hidden_act": act_out,
           "max_position_embeddings": max_pos, "rms_norm_eps": cfg.layernorm_epsilon,
           "rope_theta": cfg.rotary_base, "rope_scaling": scaling,
           "rope_parameters": {"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rotary_base},
           "attention_dropout": 0.0}
    if model_type == "llama":
        out.update(attention_bias=layout["qkv_bias"], mlp_bias=layout["mlp_bias"])
    elif model_type == "mistral":
        out["sliding_window"] = cfg.sliding_window
    else:
        window = cfg.sliding_window
        out.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=0)
    return out
