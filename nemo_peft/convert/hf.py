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

import json
import os
import re

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nemo_peft.convert.hf_config import config_to_hf, export_layout, hf_to_config, infer_model_type
from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.modules.rope import rope_inv_freq

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_GPT2_LAYER = (  # (ours, theirs, Conv1D weight stored [in, out])
    ("input_layernorm", "ln_1", False), ("self_attention.linear_qkv", "attn.c_attn", True),
    ("self_attention.linear_proj", "attn.c_proj", True), ("pre_mlp_layernorm", "ln_2", False),
    ("mlp.linear_fc1", "mlp.c_fc", True), ("mlp.linear_fc2", "mlp.c_proj", True),
)
_IGNORED = {  # tensors some checkpoints carry that are not weights (causal-mask buffers, RoPE caches)
    "gpt2": re.compile(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias"),
    "llama": re.compile(r".*rotary_emb\.inv_freq"),
}


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path!r} is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path!r} holds a JSON {type(data).__name__}, not an object.")
    return data


def is_hf_dir(path: str) -> bool:
    """True for a directory whose config.json names a transformers ``model_type``."""
    cfg = os.path.join(str(path), "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        return "model_type" in _read_json(cfg)
    except (ValueError, OSError):
        return False


def read_hf_config(directory: str) -> dict:
    if not os.path.exists(directory):
        raise FileNotFoundError(f"Hugging Face checkpoint directory {directory!r} does not exist.")
    if not os.path.isdir(directory):
        raise ValueError(f"{directory!r} is a file; pass the Hugging Face checkpoint directory "
                         "(config.json + model.safetensors).")
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{directory!r} is not a Hugging Face checkpoint: it has no config.json "
                         "(expected config.json + model.safetensors, as written by save_pretrained).")
    hf = _read_json(path)
    if "model_type" not in hf:
        hint = " It is a nemo_peft native directory: use convert.native.load_model." \
            if hf.get("format") == "nemo_peft_gpt" else ""
        raise ValueError(f"{path!r} has no 'model_type', so it is not a transformers config.json.{hint}")
    return hf


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards named in its index."""
    index_path, single = os.path.join(directory, INDEX_NAME), os.path.join(directory, WEIGHTS_NAME)
    weight_map = None
    if os.path.isfile(index_path):
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path!r} has no 'weight_map'; the index is damaged.")
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
        files = [WEIGHTS_NAME]
    else:
        others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack")))
        raise ValueError(
            f"{directory!r} has a config.json but no {WEIGHTS_NAME} or {INDEX_NAME}"
            + (f"; found {others[:3]}: only safetensors weights are read (re-save with "
               "save_pretrained(..., safe_serialization=True))." if others else ", so it holds no model weights."))
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"Weight shard {path!r} listed in {INDEX_NAME} is missing.")
        try:
            part = load_file(path)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"Cannot read {path!r} ({type(e).__name__}: {e}); the file is damaged or "
                             "truncated — download or save the checkpoint again.") from None
        dup = sorted(tensors.keys() & part.keys())
        if dup:
            raise ValueError(f"Tensors {dup[:3]} appear in more than one shard (again in {path!r}).")
        tensors.update(part)
    if weight_map is not None:
        lost = sorted(set(weight_map) - set(tensors))
        if lost:
            raise ValueError(f"{index_path!r} lists tensors {lost[:5]} that its shards do not contain.")
    return tensors


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


# --- tokenizer ------------------------------------------------------------------------------

_SPECIAL = (("bos", "bos_token"), ("eos", "eos_token"), ("pad", "pad_token"))


def _special_ids(directory: str, hf: dict, backend) -> tuple[dict, list | None]:
    """bos/eos/pad ids: the tokenizer's own files first, then generation_config.json, then config.json."""
    found = {k: None for k, _ in _SPECIAL}
    sources = []
    if backend is not None:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                d = _read_json(path)
                tokens = {k: d.get(t) for k, t in _SPECIAL}
                tokens = {k: v.get("content") if isinstance(v, dict) else v for k, v in tokens.items()}
                sources.append({k: backend.token_to_id(v) if isinstance(v, str) else None for k, v in tokens.items()})
    gen_path = os.path.join(directory, "generation_config.json")
    gen = _read_json(gen_path) if os.path.isfile(gen_path) else {}
    all_eos = next((v for v in (gen.get("eos_token_id"), hf.get("eos_token_id")) if isinstance(v, list)), None)
    for d in (gen, hf):
        sources.append({k: (v[0] if isinstance(v, list) and v else v if isinstance(v, int) else None)
                        for k, v in ((k, d.get(f"{k}_token_id")) for k, _ in _SPECIAL)})
    for src in sources:
        for k, v in src.items():
            if found[k] is None and v is not None:
                found[k] = int(v)
    return found, all_eos if all_eos and len(all_eos) > 1 else None


def _load_tokenizer(directory: str) -> Tokenizer | None:
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        return None  # slow-tokenizer-only checkpoints (vocab.json / tokenizer.model) are not read
    from tokenizers import Tokenizer as _Backend
    try:
        return Tokenizer(_Backend.from_file(path))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise ValueError(f"Cannot read {path!r} ({e}); the file is damaged or from an unsupported version.") from None


def _save_tokenizer(tok: Tokenizer, directory: str, max_len: int) -> None:
    names = {t: tok.backend.id_to_token(i) for (k, t), i in zip(_SPECIAL, (tok.bos_id, tok.eos_id, tok.pad_id))
             if i is not None}
    atomic_write(os.path.join(directory, "tokenizer.json"), lambda tmp: tok.backend.save(tmp))
    _write_json(os.path.join(directory, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
        "clean_up_tokenization_spaces": False, **names})
    _write_json(os.path.join(directory, "special_tokens_map.json"), names)


def _write_json(path: str, data: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
    atomic_write(path, write)


# --- entry points ---------------------------------------------------------------------------

def _instantiate(cfg: GPTConfig, state: dict, dtype: torch.dtype, source: str) -> GPTModel:
    """A GPTModel holding ``state``, built on the meta device so no random init is paid for."""
    state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = GPTModel(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items() if ".adapters." not in k}
    wrong = [f"{k}: file {tuple(v.shape)} vs config {tuple(expected[k])}"
             for k, v in state.items() if k in expected and v.shape != expected[k]]
    missing = sorted(set(expected) - set(state))
    if wrong or missing:
        raise ValueError(f"{source}: weights do not fit config.json: wrong shapes {wrong[:3]}, missing {missing[:3]}.")
    model.load_state_dict(state, strict=False, assign=True)
    rope_buffer = getattr(model.rotary, "inv_freq", None)  # recomputed below
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()] if t is not rope_buffer):
        model = GPTModel(cfg).to(dtype)  # a module gained state this loader does not fill: build it the slow way
        model.load_state_dict(state, strict=False)
    if model.rotary is not None:  # non-persistent, fp32 on purpose
        model.rotary.inv_freq = rope_inv_freq(cfg.head_dim, cfg.rotary_base, cfg.rope_scaling)
    return model


def load_hf(directory: str, dtype: torch.dtype = torch.float32) -> tuple[GPTModel, Tokenizer | None]:
    """(model, tokenizer or None) from a local Hugging Face checkpoint directory, weights cast to ``dtype``."""
    directory = os.path.expanduser(str(directory))
    hf = read_hf_config(directory)
    cfg, layout = hf_to_config(hf, source=os.path.join(directory, "config.json"))
    state = hf_to_state(read_weights(directory), cfg, layout, hf["model_type"], directory)
    tok = _load_tokenizer(directory)
    ids, all_eos = _special_ids(directory, hf, tok.backend if tok else None)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    if tok is not None:
        tok.bos_id, tok.eos_id, tok.pad_id = ids["bos"], ids["eos"], ids["pad"]
    cfg.extra = {"source": "hf", "path": os.path.abspath(directory), "model_type": hf["model_type"],
                 **({"eos_token_ids": [int(i) for i in all_eos]} if all_eos else {})}
    return _instantiate(cfg, state, dtype, directory).eval(), tok


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
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    stale = os.path.join(directory, INDEX_NAME)
    if os.path.isfile(stale):  # an old sharded index would make loaders ignore the new file
        os.remove(stale)
    eos = cfg.extra.get("eos_token_ids") or hf["eos_token_id"]
    _write_json(os.path.join(directory, "generation_config.json"),
                {"bos_token_id": hf["bos_token_id"], "eos_token_id": eos, "pad_token_id": hf["pad_token_id"]})
    if tokenizer is not None:
        _save_tokenizer(tokenizer, directory, cfg.max_position_embeddings)
    _write_json(os.path.join(directory, "config.json"), hf)
