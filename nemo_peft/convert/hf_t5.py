"""Hugging Face ``T5ForConditionalGeneration`` (and mT5) directories <-> ``T5Model``.

``load_hf_t5(dir)`` reads ``config.json`` + ``model.safetensors`` (or a sharded index) and,
when present, ``tokenizer.json`` (T5's Unigram model, read with the ``tokenizers`` library)
with its special ids. ``save_hf_t5(model, dir)`` writes a directory that transformers loads
with the same outputs. transformers itself is needed for neither.

Layouts: HF keeps q/k/v (and wi_0/wi_1) as separate matrices; ours are fused as [q | k | v]
for self-attention, [k | v] for cross-attention and [gate | up] = [wi_0 | wi_1], so
conversion is a concat / split. The relative position bias lives in HF's layer 0
(``block.0.layer.0.SelfAttention.relative_attention_bias``); ours at the stack level.

The LM head: T5 scales the decoder output by d_model**-0.5 when the embeddings are tied
(T5) and not when they are untied (T5 v1.1, Flan-T5, mT5). transformers 5 records this as
``scale_decoder_outputs`` and always *declares* ties, untying when ``lm_head.weight`` differs
from ``shared.weight`` in the file; we follow the file the same way.
"""
from __future__ import annotations

import os

import torch

from nemo_peft.convert.hf_dir import (load_tokenizer, read_hf_config, read_json, read_weights, special_ids,
                                      write_checkpoint)
from nemo_peft.convert.hf_peft_layout import HFPeftSpec, Layout
from nemo_peft.convert.instantiate import instantiate
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.t5 import T5Config, T5Model, parse_feed_forward_proj

SUPPORTED = ("t5", "mt5")
ARCHITECTURES = {"t5": "T5ForConditionalGeneration", "mt5": "MT5ForConditionalGeneration"}
# transformers' config-class defaults, for fields a config.json may omit
_DEFAULTS = {
    "t5": {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8,
           "feed_forward_proj": "relu", "tie_word_embeddings": True},
    "mt5": {"vocab_size": 250112, "d_model": 512, "d_kv": 64, "d_ff": 1024, "num_layers": 8, "num_heads": 6,
            "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
}
_IGNORED = {  # tensors old checkpoints carry that transformers drops too
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
}
TOKENIZER_MAX_LEN = 512  # T5's model_max_length (relative positions have no hard limit)


def _unsupported(field: str, value, supported: str, source: str):
    return ValueError(f"{source}: config field {field}={value!r} is not supported ({supported}); "
                      "loading it would silently change the model's outputs.")


def is_hf_t5_config(hf: dict) -> bool:
    """True for a parsed config.json of a T5-family model this module reads."""
    return hf.get("model_type") in SUPPORTED


# --- config -----------------------------------------------------------------------------------

def hf_to_t5_config(hf: dict, source: str = "config.json") -> T5Config:
    """T5Config from a parsed HF ``config.json``. Whether the head is tied is decided again by
    the weights (``lm_head.weight`` present and different from ``shared.weight`` = untied)."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"{source}: model_type {model_type!r} is not a supported encoder-decoder; supported: "
                         f"{', '.join(SUPPORTED)} (umt5, longt5 and switch_transformers differ in architecture).")
    d = _DEFAULTS[model_type]
    if hf.get("quantization_config"):
        raise _unsupported("quantization_config", hf["quantization_config"].get("quant_method", "?"),
                           "only unquantized checkpoints can be read", source)
    if not hf.get("is_encoder_decoder", True):
        raise _unsupported("is_encoder_decoder", hf["is_encoder_decoder"], "only the full encoder-decoder", source)
    if hf.get("is_decoder", False):
        raise _unsupported("is_decoder", hf["is_decoder"], "only the full encoder-decoder", source)
    archs = hf.get("architectures") or []
    if archs and not any(a.endswith("ForConditionalGeneration") for a in archs):
        raise _unsupported("architectures", archs, "only *ForConditionalGeneration checkpoints carry the LM head "
                           "this model needs", source)
    ffp = hf.get("feed_forward_proj", d["feed_forward_proj"])
    try:
        parse_feed_forward_proj(ffp)
    except ValueError as e:
        raise _unsupported("feed_forward_proj", ffp, str(e).split("; ", 1)[-1], source) from None
    tied = hf.get("tie_word_embeddings", d["tie_word_embeddings"])
    # transformers 5 writes scale_decoder_outputs; before, T5 scaled exactly when tied; mT5 5.x never scales
    scale = hf.get("scale_decoder_outputs", bool(tied) if model_type == "t5" else False)
    for name in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size"):
        value = hf.get(name, d[name])
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{source}: {name}={value!r} must be a positive integer.")
    eos = hf.get("eos_token_id", 1)
    pad = hf.get("pad_token_id", 0)
    start = hf.get("decoder_start_token_id")
    return T5Config(
        vocab_size=int(hf.get("vocab_size", d["vocab_size"])), d_model=int(hf.get("d_model", d["d_model"])),
        d_kv=int(hf.get("d_kv", d["d_kv"])), d_ff=int(hf.get("d_ff", d["d_ff"])),
        num_layers=int(hf.get("num_layers", d["num_layers"])),
        num_decoder_layers=int(hf.get("num_decoder_layers") or hf.get("num_layers", d["num_layers"])),
        num_heads=int(hf.get("num_heads", d["num_heads"])),
        relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)), feed_forward_proj=ffp,
        tie_word_embeddings=bool(tied), scale_decoder_outputs=bool(scale),
        decoder_start_token_id=int(start if start is not None else (pad if pad is not None else 0)),
        pad_token_id=int(pad) if pad is not None else None,
        eos_token_id=int(eos[0]) if isinstance(eos, list) and eos else (int(eos) if isinstance(eos, int) else None),
    )


def t5_config_to_hf(cfg: T5Config, model_type: str, dtype: str = "float32") -> dict:
    """The ``config.json`` dict; a model whose head is tied-but-unscaled or untied-but-scaled
    is written as untied and unscaled (see ``t5_state_to_hf``), which every transformers reads."""
    tied = cfg.tie_word_embeddings and cfg.scale_decoder_outputs
    return {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type, "vocab_size": cfg.vocab_size,
            "d_model": cfg.d_model, "d_kv": cfg.d_kv, "d_ff": cfg.d_ff, "num_layers": cfg.num_layers,
            "num_decoder_layers": cfg.num_decoder_layers, "num_heads": cfg.num_heads,
            "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
            "relative_attention_max_distance": cfg.relative_attention_max_distance,
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "feed_forward_proj": cfg.feed_forward_proj,
            "dropout_rate": 0.0, "initializer_factor": 1.0, "is_encoder_decoder": True, "use_cache": True,
            "tie_word_embeddings": tied, "scale_decoder_outputs": tied,
            "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
            "decoder_start_token_id": cfg.decoder_start_token_id, "torch_dtype": dtype}


# --- weights ----------------------------------------------------------------------------------

def _layer_names(i: int, decoder: bool) -> list[tuple[str, list[str]]]:
    """(our name, HF names concatenated into it) for layer i of a stack."""
    stack = "decoder" if decoder else "encoder"
    h, o = f"{stack}.block.{i}.layer.", f"{stack}.layers.{i}."
    sa = h + "0.SelfAttention."
    ff = h + ("2" if decoder else "1") + ".DenseReluDense."
    names = [(o + "input_layernorm.weight", [h + "0.layer_norm.weight"]),
             (o + "self_attention.linear_qkv.weight", [sa + "q.weight", sa + "k.weight", sa + "v.weight"]),
             (o + "self_attention.linear_proj.weight", [sa + "o.weight"])]
    if decoder:
        ca = h + "1.EncDecAttention."
        names += [(o + "pre_cross_attn_layernorm.weight", [h + "1.layer_norm.weight"]),
                  (o + "cross_attention.linear_q.weight", [ca + "q.weight"]),
                  (o + "cross_attention.linear_kv.weight", [ca + "k.weight", ca + "v.weight"]),
                  (o + "cross_attention.linear_proj.weight", [ca + "o.weight"])]
    names += [(o + "pre_mlp_layernorm.weight", [h + ("2" if decoder else "1") + ".layer_norm.weight"]),
              (o + "mlp.linear_fc2.weight", [ff + "wo.weight"])]
    return names


def _fc1_names(i: int, decoder: bool, gated: bool) -> tuple[str, list[str]]:
    stack = "decoder" if decoder else "encoder"
    ff = f"{stack}.block.{i}.layer.{2 if decoder else 1}.DenseReluDense."
    return (f"{stack}.layers.{i}.mlp.linear_fc1.weight",
            [ff + "wi_0.weight", ff + "wi_1.weight"] if gated else [ff + "wi.weight"])


def _all_names(cfg: T5Config):
    for decoder, n in ((False, cfg.num_layers), (True, cfg.num_decoder_layers)):
        for i in range(n):
            yield from _layer_names(i, decoder)
            yield _fc1_names(i, decoder, cfg.gated)
        stack = "decoder" if decoder else "encoder"
        yield (f"{stack}.position_bias.relative_attention_bias.weight",
               [f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])
        yield f"{stack}.final_layernorm.weight", [f"{stack}.final_layer_norm.weight"]


def hf_to_t5_state(tensors: dict, cfg: T5Config, source: str) -> dict:
    """Our state dict from HF tensors; sets ``cfg.tie_word_embeddings`` from the file."""
    t = dict(tensors)

    def take(name):
        if name not in t:
            raise ValueError(f"{source}: tensor {name!r} is missing; the weights do not fit its config.json "
                             f"(num_layers={cfg.num_layers}, num_decoder_layers={cfg.num_decoder_layers}, "
                             f"feed_forward_proj={cfg.feed_forward_proj!r}).")
        return t.pop(name)

    shared = next((t.pop(k) for k in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
                   if k in t), None)
    if shared is None:
        raise ValueError(f"{source}: tensor 'shared.weight' (the token embeddings) is missing.")
    for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if k in t and not torch.equal(t.pop(k), shared):
            raise ValueError(f"{source}: {k!r} differs from 'shared.weight'; separate encoder/decoder embeddings "
                             "are not supported.")
    sd = {"embedding.word_embeddings.weight": shared}
    for ours, theirs in _all_names(cfg):
        parts = [take(n) for n in theirs]
        sd[ours] = parts[0] if len(parts) == 1 else torch.cat(parts)
    head = t.pop("lm_head.weight", None)
    cfg.tie_word_embeddings = head is None or torch.equal(head, shared)
    if not cfg.tie_word_embeddings:
        sd["output_layer.weight"] = head
    left = sorted(k for k in t if k not in _IGNORED)
    if left:
        raise ValueError(f"{source}: unexpected tensors {left[:5]}{'...' if len(left) > 5 else ''} for a T5 model "
                         "with this config.json (an unsupported variant of the architecture?).")
    return sd


def t5_state_to_hf(sd: dict, cfg: T5Config) -> dict:
    out = {"shared.weight": sd["embedding.word_embeddings.weight"]}
    for ours, theirs in _all_names(cfg):  # fused weights are equal parts: [q|k|v], [k|v], [wi_0|wi_1]
        w = sd[ours]
        out.update(zip(theirs, w.split(w.shape[0] // len(theirs))))
    if not (cfg.tie_word_embeddings and cfg.scale_decoder_outputs):  # written as untied and unscaled
        head = sd["embedding.word_embeddings.weight"] if cfg.tie_word_embeddings else sd["output_layer.weight"]
        if cfg.scale_decoder_outputs:  # fold the d_model**-0.5 into the head
            head = (head.float() * cfg.d_model ** -0.5).to(head.dtype)
        out["lm_head.weight"] = head.clone()
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


# --- entry points -----------------------------------------------------------------------------

def load_hf_t5(directory: str, dtype: torch.dtype = torch.float32) -> tuple[T5Model, Tokenizer | None]:
    """(model, tokenizer or None) from a local T5/mT5 checkpoint directory, weights cast to ``dtype``."""
    directory = os.path.expanduser(str(directory))
    hf = read_hf_config(directory)
    cfg = hf_to_t5_config(hf, source=os.path.join(directory, "config.json"))
    state = hf_to_t5_state(read_weights(directory), cfg, directory)
    tok = load_tokenizer(directory)
    ids, _ = special_ids(directory, hf, tok.backend if tok else None)
    gen_path = os.path.join(directory, "generation_config.json")
    gen = read_json(gen_path) if os.path.isfile(gen_path) else {}
    if ids["eos"] is not None:
        cfg.eos_token_id = ids["eos"]
    if ids["pad"] is not None:
        cfg.pad_token_id = ids["pad"]
    if isinstance(gen.get("decoder_start_token_id"), int) and "decoder_start_token_id" not in hf:
        cfg.decoder_start_token_id = gen["decoder_start_token_id"]
    if tok is not None:  # T5 has no BOS
        tok.bos_id, tok.eos_id, tok.pad_id = ids["bos"], cfg.eos_token_id, cfg.pad_token_id
    cfg.extra = {"source": "hf", "path": os.path.abspath(directory), "model_type": hf["model_type"]}
    return instantiate(T5Model, cfg, state, directory, dtype).eval(), tok


def save_hf_t5(model: T5Model, directory: str, tokenizer: Tokenizer | None = None,
               model_type: str | None = None) -> None:
    """Write ``model`` as a transformers checkpoint (config.json, generation_config.json,
    model.safetensors, and tokenizer files when ``tokenizer`` is given).

    ``model_type`` ("t5" or "mt5") defaults to the family the model was loaded from, else "t5".
    Only base weights are written: merge adapters first to export them.
    """
    cfg = model.config
    model_type = model_type or cfg.extra.get("model_type") or "t5"
    if model_type not in SUPPORTED:
        raise ValueError(f"Cannot export a T5Model as model_type {model_type!r}; supported: {', '.join(SUPPORTED)}.")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if ".adapters." not in k}
    tensors = t5_state_to_hf(sd, cfg)
    dtype = str(model.embedding.word_embeddings.weight.dtype).removeprefix("torch.")
    hf = t5_config_to_hf(cfg, model_type, dtype)
    if tokenizer is not None:
        for k, tid in (("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id)):
            if hf[f"{k}_token_id"] is None:
                hf[f"{k}_token_id"] = tid
    generation = {"decoder_start_token_id": hf["decoder_start_token_id"], "eos_token_id": hf["eos_token_id"],
                  "pad_token_id": hf["pad_token_id"]}
    write_checkpoint(directory, tensors, hf, generation, tokenizer, TOKENIZER_MAX_LEN)


def peft_layout(model: T5Model, model_type: str | None = None) -> Layout:
    """Our host linear path -> [(HF module path, row start, rows)], for HF-PEFT adapters: a fused
    host ([q | k | v], [k | v], [wi_0 | wi_1]) is the HF modules stacked in equal row blocks."""
    layout = {}
    for ours, theirs in _all_names(model.config):
        host = ours.removesuffix(".weight")
        rows = getattr(model.get_submodule(host), "out_features", None)
        if rows is None:  # norms and the position bias are not LoRA targets
            continue
        n = rows // len(theirs)
        layout[host] = [(t.removesuffix(".weight"), i * n, n) for i, t in enumerate(theirs)]
    return layout


T5_PEFT_SPEC = HFPeftSpec(
    task_type="SEQ_2_SEQ_LM",
    model_types=SUPPORTED,
    default_model_type=lambda model: model.config.extra.get("model_type") or "t5",
    layout=peft_layout,  # t5 and mt5 name modules alike
)
