"""Hugging Face checkpoints: logits parity with transformers on tiny random models, export, errors."""
from __future__ import annotations

import json
import os

import pytest
import torch

from nemo_peft import load_pretrained
from nemo_peft.convert.hf_gpt import load_hf, save_hf
from nemo_peft.convert.hf_gpt_config import hf_to_config
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt import GPTModel
from tests.helpers import make_model, randomize_base

transformers = pytest.importorskip("transformers")
T = transformers
TOL = 1e-4
VOCAB = 101
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, bos_token_id=1, eos_token_id=2)


def _gpt2(**kw):
    base = dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)
    return T.GPT2Config(**{**base, **kw})


# name -> (config factory, sequence length)
IMPORT_CASES = {
    "gpt2_tied": (lambda: _gpt2(), 24),
    "gpt2_untied_ninner_gelu": (lambda: _gpt2(n_inner=48, activation_function="gelu", tie_word_embeddings=False,
                                              layer_norm_epsilon=1e-3), 24),
    "llama_gqa_tied_theta": (lambda: T.LlamaConfig(**{**SMALL, "hidden_size": 48, "num_attention_heads": 6},
                                                   tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=5e5), 24),
    "llama_head_dim_attn_bias": (lambda: T.LlamaConfig(**SMALL, head_dim=16, attention_bias=True,
                                                       hidden_act="gelu_pytorch_tanh"), 24),
    "llama_mlp_bias_gelu": (lambda: T.LlamaConfig(**SMALL, mlp_bias=True, hidden_act="gelu"), 24),
    "llama_rope_linear": (lambda: T.LlamaConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.5}), 24),
    "llama_rope_llama3": (lambda: T.LlamaConfig(**SMALL, max_position_embeddings=128, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), 24),
    "llama_rope_dynamic_long": (lambda: T.LlamaConfig(**SMALL, max_position_embeddings=16,
                                                      rope_scaling={"rope_type": "dynamic", "factor": 2.0}), 40),
    "mistral_head_dim_sliding": (lambda: T.MistralConfig(**SMALL, head_dim=16, sliding_window=8), 24),
    "mistral_no_window": (lambda: T.MistralConfig(**SMALL, sliding_window=None), 24),
    "qwen2_qkv_bias_untied": (lambda: T.Qwen2Config(**SMALL), 24),
    "qwen2_tied_sliding_all_layers": (lambda: T.Qwen2Config(**SMALL, tie_word_embeddings=True, use_sliding_window=True,
                                                            sliding_window=6, max_window_layers=0), 24),
}


def _hf_checkpoint(tmp_path, config, name="hf", **save_kw):
    torch.manual_seed(0)
    model = randomize_base(T.AutoModelForCausalLM.from_config(config))
    path = str(tmp_path / name)
    model.save_pretrained(path, **save_kw)
    return model, path


def _batch(seq, pad=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (2, seq), generator=g)  # every model here has >= 97 tokens
    mask = torch.ones(2, seq, dtype=torch.long)
    mask[1, :pad] = 0
    ids[1, :pad] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _max_diff(hf_model, ours, seq, pad=3, check_rows=True):
    """Max |logits| difference: plain batch, and a left-padded batch on its real tokens only."""
    ids, mask, pos = _batch(seq, pad)
    with torch.no_grad():
        plain = (hf_model(ids).logits - ours(ids)).abs().max().item()
        ref = hf_model(ids, attention_mask=mask, position_ids=pos).logits
        got = ours(ids, attention_mask=mask, position_ids=pos)
        padded = (ref - got)[mask.bool()].abs().max().item()
        if check_rows:  # the padded row equals that sequence run alone
            alone = ours(ids[1:, pad:])
            assert (alone[0] - got[1, pad:]).abs().max().item() < TOL
    return max(plain, padded)


@pytest.mark.parametrize("case", sorted(IMPORT_CASES))
def test_import_logits_match_transformers(tmp_path, case):
    factory, seq = IMPORT_CASES[case]
    hf_model, path = _hf_checkpoint(tmp_path, factory())
    ours, tok = load_hf(path)
    assert tok is None and ours.config.extra["model_type"] == hf_model.config.model_type
    # dynamic NTK depends on the longest position of the batch, so a row alone differs (as in transformers)
    diff = _max_diff(hf_model, ours, seq, check_rows="dynamic" not in case)
    assert diff <= TOL, f"{case}: max abs diff {diff}"


def test_config_mapping_details(tmp_path):
    _, path = _hf_checkpoint(tmp_path, IMPORT_CASES["llama_head_dim_attn_bias"][0]())
    cfg = load_hf(path)[0].config
    assert (cfg.num_query_groups, cfg.head_dim, cfg.kv_channels) == (2, 16, 16)
    assert cfg.add_qkv_bias and cfg.add_bias_linear and cfg.activation == "gelu_tanh"
    assert not cfg.share_embeddings_and_output_weights and (cfg.bos_token_id, cfg.eos_token_id) == (1, 2)
    cfg = hf_to_config(T.Qwen2Config(**SMALL).to_dict())[0]
    assert cfg.add_qkv_bias and not cfg.add_bias_linear and cfg.sliding_window is None
    cfg = hf_to_config(_gpt2(n_inner=48).to_dict())[0]
    assert (cfg.ffn_hidden_size, cfg.position_embedding_type, cfg.activation) == (48, "learned_absolute", "gelu_tanh")


def test_scaling_and_window_really_matter(tmp_path):
    """Guards the parity tests above: dynamic RoPE and the sliding window change these logits."""
    for case, field in (("llama_rope_dynamic_long", "rope_scaling"), ("mistral_head_dim_sliding", "sliding_window")):
        factory, seq = IMPORT_CASES[case]
        ours = load_hf(_hf_checkpoint(tmp_path, factory(), name=case)[1])[0]
        plain = GPTModel(type(ours.config)(**{**ours.config.to_dict(), field: None})).eval()
        plain.load_state_dict(ours.state_dict())
        ids = _batch(seq)[0]
        with torch.no_grad():
            assert (ours(ids) - plain(ids)).abs().max() > 1e-3, case


def test_legacy_rope_keys(tmp_path):
    """Old-style config.json (top-level rope_theta, rope_scaling with 'type') reads the same."""
    config = T.LlamaConfig(**SMALL, rope_scaling={"rope_type": "linear", "factor": 2.0}, rope_theta=20000.0)
    hf_model, path = _hf_checkpoint(tmp_path, config)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("rope_parameters")
    cfg.update(rope_theta=20000.0, rope_scaling={"type": "linear", "factor": 2.0})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    ours = load_hf(path)[0]
    assert ours.config.rotary_base == 20000.0 and ours.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert _max_diff(hf_model, ours, 20) <= TOL


def test_sharded_checkpoint(tmp_path):
    hf_model, path = _hf_checkpoint(tmp_path, T.Qwen2Config(**SMALL), max_shard_size="20KB")
    assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 2
    assert _max_diff(hf_model, load_hf(path)[0], 24) <= TOL
    assert _max_diff(hf_model, load_pretrained(path)[0], 24) <= TOL


def test_special_ids_from_tokenizer_and_generation_config(tmp_path):
    tok = Tokenizer.byte_level()
    model = make_model("llama", vocab_size=tok.vocab_size)
    path = str(tmp_path / "m")
    save_hf(model, path, tokenizer=tok)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 256, "eos_token_id": [257, 258]}, f)
    ours, got = load_hf(path)
    assert (got.bos_id, got.eos_id, got.pad_id) == (256, 257, 258)
    assert (ours.config.bos_token_id, ours.config.eos_token_id, ours.config.pad_token_id) == (256, 257, 258)
    assert ours.config.extra["eos_token_ids"] == [257, 258]
    assert got.encode("héllo wörld") == tok.encode("héllo wörld")


# --- export ---------------------------------------------------------------------------------

EXPORT_CASES = {
    "gpt2": ("gpt2", {}, None),
    "llama_gqa_tied": ("llama", {}, None),
    "qwen2_untied": ("qwen2", {}, None),
    "llama_biases_head_dim_llama3": ("llama", dict(add_bias_linear=True, add_qkv_bias=True, kv_channels=16,
                                                   rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                                 "original_max_position_embeddings": 32}), "llama"),
    "llama_dynamic_long": ("llama", dict(max_position_embeddings=16, rope_scaling={
        "rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16}), None),
    "mistral_sliding": ("llama", dict(sliding_window=6, share_embeddings_and_output_weights=False), None),
}


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_export_round_trip(tmp_path, case):
    family, overrides, model_type = EXPORT_CASES[case]
    model = randomize_base(make_model(family, **overrides))
    path = str(tmp_path / "out")
    save_hf(model, path, model_type=model_type)
    with open(os.path.join(path, "config.json")) as f:
        hf_cfg = json.load(f)
    assert hf_cfg["architectures"] and hf_cfg["model_type"] == (model_type or {
        "mistral_sliding": "mistral", "qwen2_untied": "qwen2", "gpt2": "gpt2"}.get(case, "llama"))
    hf_model, info = T.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    diff = _max_diff(hf_model.eval(), model, 40 if "dynamic" in case else 24, check_rows=False)
    assert diff <= TOL, f"{case}: max abs diff {diff}"
    back, tok = load_hf(path)
    assert tok is None
    mine, theirs = model.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    skip = {"extra", "kv_channels"}
    assert {k: v for k, v in back.config.to_dict().items() if k not in skip} == \
        {k: v for k, v in model.config.to_dict().items() if k not in skip}


def test_hf_to_ours_to_hf_keeps_bias_layout(tmp_path):
    hf_model, path = _hf_checkpoint(tmp_path, T.LlamaConfig(**SMALL, attention_bias=True, mlp_bias=False))
    ours = load_hf(path)[0]
    out = str(tmp_path / "again")
    save_hf(ours, out)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert (cfg["model_type"], cfg["attention_bias"], cfg["mlp_bias"]) == ("llama", True, False)
    again = T.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = _batch(20)[0]
    with torch.no_grad():
        assert (again(ids).logits - hf_model(ids).logits).abs().max() <= TOL


def test_export_tokenizer_loads_in_transformers(tmp_path):
    tok = Tokenizer.byte_level()
    model = make_model("qwen2", vocab_size=tok.vocab_size)
    path = str(tmp_path / "tok")
    save_hf(model, path, tokenizer=tok)
    hf_tok = T.AutoTokenizer.from_pretrained(path)
    text = "Hello, wörld!\n  2024-03-15"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (256, 257, 258)
    assert hf_tok.decode(tok.encode(text)) == text
    got = load_hf(path)[1]
    assert (got.bos_id, got.eos_id, got.pad_id) == (256, 257, 258) and got.vocab_size == tok.vocab_size


def test_export_skips_adapter_weights(tmp_path):
    model = make_model("llama")
    slot = model.decoder.layers[0].self_attention.lora_qkv
    slot.add("extra", torch.nn.Linear(2, 2))
    assert any(".adapters." in k for k in model.state_dict())
    save_hf(model, str(tmp_path / "a"))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as f:
        assert not any("adapters" in k for k in f.keys())


def test_export_refuses_unrepresentable_model(tmp_path):
    with pytest.raises(ValueError, match="model_type 'llama'.*RoPE"):
        save_hf(make_model("gpt2"), str(tmp_path / "x"), model_type="llama")
    with pytest.raises(ValueError, match="'bert'"):
        save_hf(make_model("llama"), str(tmp_path / "y"), model_type="bert")
    model = randomize_base(make_model("llama", add_bias_linear=True))
    with pytest.raises(ValueError, match="mistral.*non-zero"):
        save_hf(model, str(tmp_path / "z"), model_type="mistral")


def test_sliding_window_with_kv_cache_matches_full_forward():
    model = randomize_base(make_model("llama", sliding_window=4))
    ids = _batch(12)[0][:1]
    with torch.no_grad():
        full = model(ids)
        cache = model.new_kv_cache(1, 12)
        steps = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, i:i + 1], kv_cache=cache) for i in range(5, 12)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL


# --- errors ---------------------------------------------------------------------------------

def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_hf(str(tmp_path))
    with pytest.raises(ValueError, match="no config.json"):
        load_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_hf(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="model_type"):
        load_hf(str(tmp_path))
    with pytest.raises(ValueError, match="neither"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(T.LlamaConfig(**SMALL).to_dict()))
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_hf(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors"):
        load_hf(str(tmp_path))


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ValueError, match="'bert'.*gpt2, llama, mistral, qwen2"):
        load_pretrained(str(tmp_path))


def test_truncated_safetensors(tmp_path):
    _, path = _hf_checkpoint(tmp_path, _gpt2())
    weights = os.path.join(path, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        load_hf(path)


def test_truncated_shard(tmp_path):
    _, path = _hf_checkpoint(tmp_path, T.LlamaConfig(**SMALL), max_shard_size="20KB")
    shard = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))[0]
    with open(os.path.join(path, shard), "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=shard):
        load_hf(path)


BAD_CONFIGS = {
    "scale_attn_by_inverse_layer_idx": lambda: _gpt2(scale_attn_by_inverse_layer_idx=True).to_dict(),
    "reorder_and_upcast_attn": lambda: _gpt2(reorder_and_upcast_attn=True).to_dict(),
    "'yarn'": lambda: {**T.LlamaConfig(**SMALL).to_dict(), "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    "partial_rotary_factor": lambda: {**T.LlamaConfig(**SMALL).to_dict(), "partial_rotary_factor": 0.5},
    "hidden_act": lambda: T.LlamaConfig(**SMALL, hidden_act="relu2").to_dict(),
    "max_window_layers": lambda: {**SMALL, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4,
                                  "max_window_layers": 1, "max_position_embeddings": 64},
    "quantization_config": lambda: {**T.LlamaConfig(**SMALL).to_dict(),
                                    "quantization_config": {"quant_method": "gptq"}},
}


@pytest.mark.parametrize("field", sorted(BAD_CONFIGS))
def test_unsupported_config_values(tmp_path, field):
    _, path = _hf_checkpoint(tmp_path, _gpt2())  # any weights: the config is rejected first
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(BAD_CONFIGS[field](), f)
    with pytest.raises(ValueError, match=field):
        load_hf(path)


def test_load_in_bf16_keeps_rope_fp32(tmp_path):
    hf_model, path = _hf_checkpoint(tmp_path, T.LlamaConfig(**SMALL))
    ours = load_hf(path, dtype=torch.bfloat16)[0]
    assert ours.embedding.word_embeddings.weight.dtype == torch.bfloat16
    assert ours.rotary.inv_freq.dtype == torch.float32
    save_hf(ours, str(tmp_path / "bf16"))
    with open(tmp_path / "bf16" / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    ids = _batch(16)[0]
    with torch.no_grad():
        assert (ours(ids).float() - hf_model(ids).logits).abs().max() < 0.1


def test_gpt2_legacy_key_names_and_buffers(tmp_path):
    """The original GPT-2 files: no 'transformer.' prefix, causal-mask buffers stored as tensors."""
    from safetensors.torch import load_file, save_file
    hf_model, path = _hf_checkpoint(tmp_path, _gpt2())
    weights = os.path.join(path, "model.safetensors")
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(weights).items()}
    tensors.update({"h.0.attn.bias": torch.ones(1, 1, 64, 64), "h.1.attn.masked_bias": torch.tensor(-1e4)})
    save_file(tensors, weights, metadata={"format": "pt"})
    assert _max_diff(hf_model, load_hf(path)[0], 24) <= TOL


def test_unexpected_tensors_are_an_error(tmp_path):
    from safetensors.torch import load_file, save_file
    _, path = _hf_checkpoint(tmp_path, T.LlamaConfig(**SMALL))
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    tensors["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)  # e.g. a Qwen3 checkpoint mislabelled
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected tensors.*q_norm"):
        load_hf(path)
