"""DoRA (against Hugging Face peft and a dense re-computation) and LoRA's rank/alpha patterns."""
import copy
import math

import pytest
import torch

from nemo_peft.peft.base import PEFTConfig
from nemo_peft.peft.dora import DoraAdapter, DoraPEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.helpers import IDS, assert_only_adapters_get_grads, make_model, randomize_adapters, train_next_token


def dora_adapters(model, name="default"):
    return {path: slot.adapters[name] for path, slot in model.adapter_slots_by_path().items() if name in slot.adapters}


def _dense_dora(model):
    """Reference: W' = m / ‖W + sBA‖ ⊙ (W + sBA) built densely (torch.linalg.norm) in a copy."""
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for path, ad in dora_adapters(dense).items():
            host = ad.host
            w = host.weight.clone()
            f_off = 0
            for start, size, delta in ad.delta_weight():
                new = w[start:start + size] + delta
                m = ad.magnitude[f_off:f_off + size]
                host.weight[start:start + size] = (m / torch.linalg.norm(new, dim=1))[:, None] * new
                f_off += size
    dense.set_active_adapters([])
    return dense


def test_output_unchanged_at_init(family):
    model = make_model(family)
    before = model(IDS)
    model.add_adapter(DoraPEFTConfig(target_modules=["all"], dim=4))
    for ad in dora_adapters(model).values():  # m starts at the row norms of the host weight
        rows = torch.cat([ad.host.weight[s:s + n] for s, n in ad.out_slices])
        torch.testing.assert_close(ad.magnitude, torch.linalg.norm(rows, dim=1), rtol=1e-6, atol=0)
    torch.testing.assert_close(model(IDS), before, rtol=0, atol=1e-6)
    randomize_adapters(model, magnitude_jitter=0.2)
    assert not torch.allclose(model(IDS), before)


def test_trainable_count_matches_closed_form():
    model = make_model("llama")  # hidden 48, q 48, kv 16 each, ffn 80 (fc1 160 wide), 3 layers
    r = 4
    model.add_adapter(DoraPEFTConfig(target_modules=["q_proj", "v_proj", "down_proj"], dim=r))
    qkv = 2 * r * 48 + r * (48 + 16) + (48 + 16)  # A_q, A_v, B_q|B_v, m over the q and v rows only
    fc2 = r * 80 + 48 * r + 48
    assert model.num_trainable_parameters() == 3 * (qkv + fc2)
    ad = model.decoder.layers[0].self_attention.lora_qkv.adapters["default"]
    assert isinstance(ad, DoraAdapter) and ad.magnitude.shape == (64,)
    assert set(ad.state_dict()) == {"lora_a", "lora_b", "magnitude"}  # the host is not part of the adapter


def test_only_adapter_params_get_gradients(family):
    model = make_model(family)
    model.add_adapter(DoraPEFTConfig(target_modules=["all"], dim=4))
    randomize_adapters(model, magnitude_jitter=0.2)
    model(IDS).logsumexp(-1).mean().backward()
    assert_only_adapters_get_grads(model)


@pytest.mark.parametrize("family,targets", [
    ("llama", ["q_proj", "v_proj"]), ("llama", ["all"]), ("llama", ["k_proj", "gate_proj", "o_proj"]),
    ("gpt2", ["k_proj", "c_fc", "o_proj"]), ("qwen2", ["q_proj", "v_proj", "linear_fc2"]),  # with biases
])
def test_equals_dense_recomputation(family, targets):
    model = make_model(family)
    model.add_adapter(DoraPEFTConfig(target_modules=targets, dim=4, alpha=8))
    randomize_adapters(model, magnitude_jitter=0.2)
    torch.testing.assert_close(model(IDS), _dense_dora(model)(IDS), atol=1e-5, rtol=1e-5)


def test_weight_norm_without_forming_ba_matches_dense():
    model = make_model("qwen2")
    model.add_adapter(DoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=3, alpha=5, use_rslora=True))
    randomize_adapters(model, magnitude_jitter=0.2)
    ad = model.decoder.layers[1].self_attention.lora_qkv.adapters["default"]
    assert ad.scale == pytest.approx(5 / math.sqrt(3))
    dense = torch.cat([torch.linalg.norm(ad.host.weight[s:s + n] + d, dim=1) for s, n, d in ad.delta_weight()])
    torch.testing.assert_close(ad.weight_norm(), dense, rtol=1e-5, atol=1e-6)
    assert not ad.weight_norm().requires_grad  # detached, as in the DoRA paper and peft


def test_partwise_adapter_leaves_other_parts_alone():
    model = make_model("qwen2")  # qkv with bias
    model.add_adapter(DoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=4))
    randomize_adapters(model, magnitude_jitter=0.2)
    attn = model.decoder.layers[0].self_attention
    x = torch.randn(2, 5, 48)
    base = attn.linear_qkv(x)
    out = attn.lora_qkv(x, base.clone())
    k0, kn = attn.output_parts["linear_qkv"]["k"]
    assert torch.equal(out[..., k0:k0 + kn], base[..., k0:k0 + kn])
    assert not torch.allclose(out[..., :k0], base[..., :k0])


@pytest.mark.parametrize("family,targets", [
    ("llama", ["all"]), ("llama", ["q_proj", "v_proj", "up_proj"]), ("gpt2", ["q_proj", "v_proj", "c_fc"]),
    ("qwen2", ["q_proj", "v_proj", "up_proj"]),
])
def test_merge_equals_unmerged_and_unmerge_restores(family, targets):
    model = make_model(family)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter(DoraPEFTConfig(target_modules=targets, dim=4, alpha=8))
    randomize_adapters(model, magnitude_jitter=0.2)
    unmerged = model(IDS)
    model.merge_adapters()
    assert model.merged_adapters == ["default"]
    changed = [k for k, v in base.items() if not torch.equal(model.state_dict()[k], v)]
    assert changed and all("linear_" in k and k.endswith("weight") for k in changed)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
    model.unmerge_adapters()
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)


def test_save_load_into_fresh_model_gives_identical_logits(tmp_path, family):
    model = make_model(family)
    model.add_adapter(DoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=3, alpha=6,
                                     rank_pattern={"linear_fc2": 2}))
    randomize_adapters(model, magnitude_jitter=0.2)
    model.save_adapters(str(tmp_path / "ad"))
    fresh = make_model(family)
    fresh.load_adapters(str(tmp_path / "ad"))
    assert torch.equal(fresh(IDS), model(IDS))
    assert fresh.adapter_configs("default")[0] == model.adapter_configs("default")[0]
    assert type(fresh.adapter_configs("default")[0]) is DoraPEFTConfig


def test_learns_a_tiny_task():
    torch.manual_seed(0)
    model = make_model("llama").train()
    model.add_adapter(DoraPEFTConfig(target_modules=["all"], dim=4, alpha=8))
    losses = train_next_token(model, steps=20)
    # a tiny random base learns slowly: 4.61 -> 3.73 here (plain LoRA with the same settings: 3.82)
    assert losses[-1] < 0.85 * losses[0], losses


def test_dropout_only_in_training():
    model = make_model("llama")
    model.add_adapter(DoraPEFTConfig(target_modules=["linear_qkv"], dim=4, dropout=0.5))
    randomize_adapters(model, magnitude_jitter=0.2)
    model.eval()
    assert torch.equal(model(IDS), model(IDS))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(IDS), model.eval()(IDS))


def test_deepcopy_keeps_each_adapter_on_its_own_host():
    model = make_model("llama")
    model.add_adapter(DoraPEFTConfig(target_modules=["linear_proj"], dim=2))
    clone = copy.deepcopy(model)
    ad = clone.decoder.layers[0].self_attention.lora_proj.adapters["default"]
    assert ad.host is clone.decoder.layers[0].self_attention.linear_proj
    assert "_block" not in dict(ad.named_modules()) and len(list(ad.children())) == 0


# ----------------------------------------------------------- against Hugging Face peft

def _peft_pair(tmp_path, hf_config, targets, ours_targets, seed=0):
    """A tiny transformers model with a random peft DoRA adapter and our model loaded from its checkpoint."""
    T = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from nemo_peft.convert.hf_gpt import load_hf

    torch.manual_seed(seed)
    hf = T.AutoModelForCausalLM.from_config(hf_config).eval()
    hf.save_pretrained(str(tmp_path / "base"))
    ours = load_hf(str(tmp_path / "base"))[0].eval()
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    ours.add_adapter(DoraPEFTConfig(target_modules=ours_targets, dim=4, alpha=8))
    return pm, ours


def _hf(params, prefix, module):
    return (params[f"{prefix}{module}.lora_A.default.weight"], params[f"{prefix}{module}.lora_B.default.weight"],
            params[f"{prefix}{module}.lora_magnitude_vector.default.weight"])


def _copy(adapter, tensors):
    """Stack peft's per-module (A, B, m) into one of ours (parts in host order)."""
    with torch.no_grad():
        adapter.lora_a.copy_(torch.cat([a for a, _, _ in tensors]))
        adapter.lora_b.copy_(torch.cat([b for _, b, _ in tensors]))
        adapter.magnitude.copy_(torch.cat([m for _, _, m in tensors]))


@pytest.mark.parametrize("attention_bias", [False, True])
def test_matches_hf_peft_dora_llama(tmp_path, attention_bias):
    T = pytest.importorskip("transformers")
    cfg = T.LlamaConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                        num_attention_heads=6, num_key_value_heads=2, attention_bias=attention_bias)
    pm, ours = _peft_pair(tmp_path, cfg, ["q_proj", "v_proj", "up_proj", "down_proj"],
                          ["q_proj", "v_proj", "up_proj", "down_proj"])
    params = dict(pm.named_parameters())
    for i, layer in enumerate(ours.decoder.layers):
        pre = f"base_model.model.model.layers.{i}."
        _copy(layer.self_attention.lora_qkv.adapters["default"],
              [_hf(params, pre, "self_attn.q_proj"), _hf(params, pre, "self_attn.v_proj")])
        _copy(layer.mlp.lora_fc1.adapters["default"], [_hf(params, pre, "mlp.up_proj")])
        _copy(layer.mlp.lora_fc2.adapters["default"], [_hf(params, pre, "mlp.down_proj")])
    ids = torch.randint(0, 101, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs, mine = pm(ids).logits, ours(ids)
        with ours.disable_adapters():
            base = ours(ids)
    assert (theirs - base).abs().max() > 1e-2  # the adapters really change the output
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)


def test_matches_hf_peft_dora_gpt2(tmp_path):
    """GPT-2: Conv1D hosts (fan_in_fan_out in peft), biases everywhere, fused c_attn."""
    T = pytest.importorskip("transformers")
    cfg = T.GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    pm, ours = _peft_pair(tmp_path, cfg, ["c_attn", "c_fc"], ["c_attn", "c_fc"])
    params = dict(pm.named_parameters())
    for i, layer in enumerate(ours.decoder.layers):
        pre = f"base_model.model.transformer.h.{i}."
        _copy(layer.self_attention.lora_qkv.adapters["default"], [_hf(params, pre, "attn.c_attn")])
        _copy(layer.mlp.lora_fc1.adapters["default"], [_hf(params, pre, "mlp.c_fc")])
    ids = torch.randint(0, 101, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), pm(ids).logits, atol=1e-4, rtol=0)


# ----------------------------------------------------------- rank_pattern / alpha_pattern (LoRA and DoRA)

def _adapter_at(model, path):
    return model.get_submodule(path).adapters["default"]


@pytest.mark.parametrize("cfg_cls", [LoraPEFTConfig, DoraPEFTConfig])
def test_rank_and_alpha_patterns_take_effect(cfg_cls):
    model = make_model("llama")
    model.add_adapter(cfg_cls(
        target_modules=["linear_qkv", "linear_proj", "linear_fc2"], dim=4, alpha=8,
        rank_pattern={"linear_fc2": 2, "*.layers.1.*.linear_qkv": 6, r"decoder\.layers\.2\..*": 3},
        alpha_pattern={"attention_dense": 16, "linear_fc2": 1.5},
    ))
    expect = {  # slot -> (dim, alpha)
        "decoder.layers.0.self_attention.lora_qkv": (4, 8), "decoder.layers.1.self_attention.lora_qkv": (6, 8),
        "decoder.layers.2.self_attention.lora_qkv": (3, 8),
        "decoder.layers.0.self_attention.lora_proj": (4, 16), "decoder.layers.2.self_attention.lora_proj": (3, 16),
        "decoder.layers.0.mlp.lora_fc2": (2, 1.5), "decoder.layers.1.mlp.lora_fc2": (2, 1.5),
        "decoder.layers.2.mlp.lora_fc2": (3, 1.5),  # the regex comes later and wins over linear_fc2
    }
    for path, (dim, alpha) in expect.items():
        ad = _adapter_at(model, path)
        host = ad.host if cfg_cls is DoraPEFTConfig else None
        assert (ad.dim, ad.alpha) == (dim, alpha), path
        assert ad.scale == pytest.approx(alpha / dim)
        assert ad.lora_a.shape[0] == dim * len(ad.out_slices) and ad.lora_b.shape[1] == dim
        if host is not None:
            assert ad.magnitude.shape == (sum(n for _, n in ad.out_slices),)
    # the overrides are used in forward: logits equal a dense merge of every update
    randomize_adapters(model)
    unmerged = model(IDS)
    model.merge_adapters()
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)


def test_patterns_with_rslora_and_hf_part_names():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj", "down_proj"], dim=4, alpha=8,
                                     use_rslora=True, rank_pattern={"q_proj": 9, "v_proj": 9},
                                     alpha_pattern={"down_proj": 3}))
    qkv = _adapter_at(model, "decoder.layers.0.self_attention.lora_qkv")
    fc2 = _adapter_at(model, "decoder.layers.0.mlp.lora_fc2")
    assert (qkv.dim, qkv.scale) == (9, pytest.approx(8 / 3))
    assert (fc2.dim, fc2.scale) == (4, pytest.approx(3 / 2))
    assert model.num_trainable_parameters() == 3 * ((2 * 9 * 48 + 9 * 64) + (4 * 80 + 48 * 4))


def test_patterns_round_trip_through_dict_and_save(tmp_path):
    cfg = LoraPEFTConfig(target_modules=["all"], dim=2, rank_pattern={"linear_qkv": 3}, alpha_pattern={"mlp": 7})
    assert PEFTConfig.from_dict(cfg.to_dict()) == cfg
    model = make_model("gpt2")
    model.add_adapter(cfg)
    randomize_adapters(model)
    model.save_adapters(str(tmp_path / "ad"))
    fresh = make_model("gpt2")
    fresh.load_adapters(str(tmp_path / "ad"))
    assert torch.equal(fresh(IDS), model(IDS))
    assert _adapter_at(fresh, "decoder.layers.0.self_attention.lora_qkv").dim == 3
    assert _adapter_at(fresh, "decoder.layers.0.mlp.lora_fc1").alpha == 7


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_modules=["q_proj", "v_proj"], rank_pattern={"q_proj": 8}), "share one adapter"),
    (dict(target_modules=["linear_qkv"], rank_pattern={"q_proj": 8}), "whole fused module"),
    (dict(target_modules=["linear_qkv"], rank_pattern={"query_key_value": 8}), "matched no module"),
    (dict(target_modules=["linear_qkv"], alpha_pattern={"*.layers.7.*": 8}), "matched no module"),
])
def test_pattern_errors(kwargs, match):
    model = make_model("llama")
    with pytest.raises(ValueError, match=match):
        model.add_adapter(LoraPEFTConfig(dim=4, **kwargs))
    assert model.adapter_names == []


@pytest.mark.parametrize("kwargs", [dict(rank_pattern={"linear_qkv": 0}), dict(rank_pattern={"linear_qkv": 2.5}),
                                    dict(alpha_pattern={"linear_qkv": "big"}), dict(rank_pattern=["linear_qkv"])])
def test_pattern_values_are_checked(kwargs):
    with pytest.raises(ValueError, match="pattern"):
        LoraPEFTConfig(**kwargs)


def test_dora_is_not_exported_as_plain_hf_lora(tmp_path):
    import pytest

    from nemo_peft import save_hf_peft
    from nemo_peft.peft.dora import DoraPEFTConfig

    model = make_model("llama")
    model.add_adapter(DoraPEFTConfig(target_modules=["q_proj"], dim=2))
    with pytest.raises(ValueError, match="DoraAdapter"):
        save_hf_peft(model, str(tmp_path), "base", model_type="llama")
    assert not (tmp_path / "adapter_model.safetensors").exists()
