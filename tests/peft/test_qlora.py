"""QLoRA: LoRA on 4-bit NF4 base linears (torchao), on CPU.

Measured on the tiny models of conftest (5 seeds x 3 families, block_size 64, both double_quant modes):
- storage of a quantized weight (4-bit codes + scales + NF4 levels) / its fp32 bytes: 0.14 (plain
  fp32 scales, 4.5 bits/weight), 0.13 (double_quant); bound 0.3.
- relative weight error ‖Q(W) − W‖ / ‖W‖: 0.092 mean, 0.095 max (NF4's ~20 dB SNR on Gaussian
  weights); bound 0.11.
- relative logits error ‖f_NF4 − f_fp32‖ / ‖f_fp32‖ with every linear quantized: 0.128 max; bound 0.2.
"""
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.peft import qlora
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.peft.qlora import NF4Linear, QLoraAdapter, QLoraPEFTConfig
from tests.helpers import IDS, make_model, randomize_adapters, train_next_token

HOSTS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
WEIGHT_REL_ERR = 0.11
LOGITS_REL_ERR = 0.2
MEMORY_RATIO = 0.3


def linears(model):
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in HOSTS}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("double_quant", [False, True])
def test_memory_and_quantization_error(family, double_quant):
    model = make_model(family)
    dense = {n: m.weight.detach().clone() for n, m in linears(model).items()}
    ref = model(IDS)
    model.add_adapter(QLoraPEFTConfig(target_modules=["all"], dim=4, double_quant=double_quant))
    quantized = linears(model)
    assert all(isinstance(m, NF4Linear) for m in quantized.values())
    nbytes = sum(m.quantized_nbytes() for m in quantized.values())
    fp32 = sum(w.numel() * 4 for w in dense.values())
    assert nbytes <= MEMORY_RATIO * fp32, nbytes / fp32
    # nothing of the dense weight is left on the module: only codes, scales, levels (and the bias)
    for m in quantized.values():
        assert not hasattr(m, "weight")
        floats = sum(t.numel() for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point())
        assert floats <= m.in_features * m.out_features // 64 + m.out_features + 16 + 1  # scales, bias, levels
    for n, m in quantized.items():
        assert rel(m.dequantize(), dense[n]) < WEIGHT_REL_ERR, n
    assert rel(model(IDS), ref) < LOGITS_REL_ERR  # B = 0: the only difference is the 4-bit base


def test_forward_equals_dense_model_with_dequantized_weights(family):
    model = make_model(family)
    dense = make_model(family)
    model.add_adapter(QLoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=4, quantize_base="all"))
    dense.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=4))
    randomize_adapters(model)
    randomize_adapters(dense)
    with torch.no_grad():
        for n, m in linears(model).items():
            dense.get_submodule(n).weight.copy_(m.dequantize())
    torch.testing.assert_close(model(IDS), dense(IDS), atol=1e-5, rtol=1e-5)


def test_quantize_targets_only_by_default():
    model = make_model("llama")
    model.add_adapter(QLoraPEFTConfig(target_modules=["q_proj", "down_proj"], dim=2, layer_selection=[1]))
    kinds = {n: type(m).__name__ for n, m in linears(model).items()}
    assert {n for n, k in kinds.items() if k == "NF4Linear"} == {"decoder.layers.0.self_attention.linear_qkv",
                                                                 "decoder.layers.0.mlp.linear_fc2"}
    model2 = make_model("llama")
    model2.add_adapter(QLoraPEFTConfig(target_modules=["q_proj"], dim=2, quantize_base="all"))
    assert all(isinstance(m, NF4Linear) for m in linears(model2).values())


def test_trainable_count_and_finetune_step_touch_only_lora(family):
    model = make_model(family).train()
    r = 4
    model.add_adapter(QLoraPEFTConfig(target_modules=["all"], dim=r, quantize_base="all"))
    expected = sum(r * (m.in_features + m.out_features) for m in linears(model).values())
    assert model.num_trainable_parameters() == expected
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = F.cross_entropy(model(IDS[:, :-1]).flatten(0, 1), IDS[:, 1:].flatten())
    loss.backward()
    for n, p in model.named_parameters():
        if ".adapters." in n:  # (A's gradient is 0 on the first step: B starts at zero)
            assert p.requires_grad and p.grad is not None, n
            assert n.endswith("lora_a") or p.grad.abs().sum() > 0, n
        else:
            assert not p.requires_grad and p.grad is None, n
    opt.step()
    after = model.state_dict()
    for k, v in frozen.items():
        assert torch.equal(after[k], v), k
    for n, ad in model.named_modules():
        if isinstance(ad, QLoraAdapter):
            assert ad.lora_b.abs().sum() > 0, n  # B left zero init: the step reached every adapter


def test_learns_a_tiny_task():
    torch.manual_seed(0)
    model = make_model("llama").train()
    model.add_adapter(QLoraPEFTConfig(target_modules=["all"], dim=4, alpha=8, double_quant=True))
    losses = train_next_token(model, steps=20)
    assert losses[-1] < 0.85 * losses[0], losses  # same tiny task as test_dora (LoRA on fp32: 4.61 -> 3.82)


@pytest.mark.parametrize("double_quant", [False, True])
def test_save_load_into_fresh_model_gives_identical_logits(tmp_path, double_quant):
    model = make_model("qwen2")
    cfg = QLoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=3, alpha=6,
                          double_quant=double_quant, rank_pattern={"linear_fc2": 2})
    model.add_adapter(cfg)
    randomize_adapters(model)
    model.save_adapters(str(tmp_path / "ad"))
    saved = set(model.adapter_state_dict())
    assert saved and all(".adapters." in k for k in saved)  # only LoRA weights are written
    fresh = make_model("qwen2")
    fresh.load_adapters(str(tmp_path / "ad"))  # quantizes the fresh base the same way
    assert isinstance(fresh.decoder.layers[0].mlp.linear_fc2, NF4Linear)
    assert torch.equal(fresh(IDS), model(IDS))
    assert fresh.adapter_configs("default")[0] == cfg


def test_merge_is_refused_before_touching_anything():
    model = make_model("llama")
    model.add_adapter(QLoraPEFTConfig(target_modules=["linear_qkv"], dim=2))
    randomize_adapters(model)
    before = model(IDS)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapters()
    assert model.merged_adapters == []
    torch.testing.assert_close(model(IDS), before, rtol=0, atol=0)
    # a plain LoRA adapter added on top of a quantized host cannot fold into it either
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2), name="plain")
    with pytest.raises(TypeError, match="quantized"):
        model.merge_adapters("plain")


def test_nf4_linear_unit():
    torch.manual_seed(0)
    lin = nn.Linear(48, 80)
    q = NF4Linear.from_linear(lin)
    assert (q.in_features, q.out_features) == (48, 80) and q.bias is not None
    with pytest.raises(AttributeError, match="dequantize"):
        q.weight  # noqa: B018
    x = torch.randn(5, 48, requires_grad=True)
    y = q(x)
    torch.testing.assert_close(y, x @ q.dequantize().T + lin.bias, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()  # gradient to the input through the 4-bit weight
    x2 = x.detach().requires_grad_()
    (x2 @ q.dequantize().T + lin.bias).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-4, rtol=1e-5)
    # plain mode keeps the exact absmax of every 64-value block
    absmax = lin.weight.detach().flatten().view(-1, 64).abs().amax(1)
    assert torch.equal(q.scales, absmax)
    # bf16 compute: output back in the input's dtype
    qb = NF4Linear.from_linear(lin, compute_dtype=torch.bfloat16)
    assert qb(x).dtype == torch.float32
    torch.testing.assert_close(qb(x), y, atol=0.05, rtol=0.05)


def test_bfloat16_compute_runs_and_trains():
    model = make_model("gpt2").train()
    model.add_adapter(QLoraPEFTConfig(target_modules=["c_attn", "c_fc"], dim=2, compute_dtype="bfloat16",
                                      double_quant=True))
    loss = F.cross_entropy(model(IDS[:, :-1]).flatten(0, 1), IDS[:, 1:].flatten())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("kwargs,match", [
    (dict(quant_type="fp4"), "quant_type"), (dict(compute_dtype="int8"), "compute_dtype"),
    (dict(quantize_base="some"), "quantize_base"), (dict(block_size=63), "block_size"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QLoraPEFTConfig(**kwargs)


def test_block_size_that_does_not_divide_a_weight_is_an_error_and_changes_nothing():
    model = make_model("llama")  # linear_proj holds 48 x 48 = 2304 weights
    with pytest.raises(ValueError, match="block_size=1024"):
        model.add_adapter(QLoraPEFTConfig(target_modules=["all"], block_size=1024))
    assert not any(isinstance(m, NF4Linear) for m in linears(model).values())
    assert model.adapter_names == []


def test_missing_torchao_says_how_to_install(monkeypatch):
    qlora._torchao_nf4.cache_clear()
    for name in ("torchao.quantization.quantize_.workflows.nf4", "torchao.dtypes"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    try:
        with pytest.raises(ImportError, match=r"pip install nemo_peft\[quant\]"):
            make_model("llama").add_adapter(QLoraPEFTConfig(target_modules=["linear_qkv"]))
    finally:
        monkeypatch.undo()
        qlora._torchao_nf4.cache_clear()
    qlora._torchao_nf4()  # available again


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantize_is_bit_equal_to_torchao_and_to_a_dense_lookup(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(96, 128, bias=False)
    w = lin.weight.detach()
    # double quantization: torchao's own NF4Tensor of the same weight is the reference
    q = NF4Linear.from_linear(lin, double_quant=True)
    ref = qlora._torchao_nf4().to_nf4(w, 64, q.scaler_block_size)
    assert torch.equal(q.dequantize(), ref.get_original_weight())
    # plain scales: code -> NF4 level, times the block's absmax, computed densely here
    p = NF4Linear.from_linear(lin)
    codes = torch.stack([p.quantized_data >> 4, p.quantized_data & 15], -1).flatten().long()
    levels = qlora._nf4_levels().to(dtype)
    dense = (levels[codes].view(-1, 64) * w.flatten().view(-1, 64).abs().amax(1, keepdim=True).to(dtype))
    assert torch.equal(p.dequantize(dtype), dense.view(128, 96))
