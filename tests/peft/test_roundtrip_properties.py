"""Property tests of whole-model round trips on tiny random models, hypothesis choosing the method
and its options within small bounds: save -> load gives identical logits, merge -> unmerge restores
the base weights, and per-sample routing equals running each row with its adapter alone."""
from __future__ import annotations

import tempfile

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nemo_peft.peft import (CanonicalAdaptersPEFTConfig, DoraPEFTConfig, IA3PEFTConfig, LoraPEFTConfig,
                            PrefixTuningPEFTConfig, PromptTuningPEFTConfig, PtuningPEFTConfig, QLoraPEFTConfig)
from tests.peft.test_matrix import ENC, build, logits, randomize

ARCHS = ["llama", "gpt2", "t5", "t5v1_1"]
GPT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "linear_qkv", "mlp",
               "*.layers.1.*.linear_fc2", r"decoder\.layers\.[02]\.self_attention\.linear_qkv\.v"]
T5_TARGETS = ["q", "k", "v", "o", "wi", "wo", "*.cross_attention.linear_kv",
              "encoder.layers.0.self_attention.linear_qkv.k"]
LORA_CLASSES = {"lora": LoraPEFTConfig, "dora": DoraPEFTConfig, "qlora": QLoraPEFTConfig}
ROUTABLE = ["lora", "dora", "ia3", "adapter"]
MERGEABLE = ["lora", "dora", "ia3"]


@st.composite
def peft_config(draw, arch: str, methods: list[str], max_alpha: float):
    method = draw(st.sampled_from(methods))
    if method in LORA_CLASSES:
        names = T5_TARGETS if arch.startswith("t5") else GPT_TARGETS
        targets = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        if arch == "gpt2":  # no gated MLP: up_proj is its whole fc1, gate_proj matches nothing
            targets = [t for t in targets if t != "gate_proj"] or ["c_attn"]
        extra = dict(block_size=16) if method == "qlora" else {}
        return LORA_CLASSES[method](target_modules=targets, dim=draw(st.integers(1, 4)),
                                    alpha=draw(st.floats(0.5, max_alpha)), use_rslora=draw(st.booleans()), **extra)
    if method == "ia3":
        return IA3PEFTConfig(target_modules=draw(st.lists(st.sampled_from(["key", "value", "mlp"]), min_size=1,
                                                          unique=True)))
    if method == "adapter":
        return CanonicalAdaptersPEFTConfig(adapter_dim=draw(st.integers(1, 4)),
                                           norm_position=draw(st.sampled_from(["pre", "post", "none"])))
    if method == "ptuning":
        return PtuningPEFTConfig(virtual_tokens=draw(st.integers(1, 3)), bottleneck_dim=draw(st.integers(1, 6)),
                                 embedding_dim=draw(st.integers(1, 6)),
                                 encoder_type=draw(st.sampled_from(["mlp", "lstm"])))
    if method == "prompt_tuning":
        return PromptTuningPEFTConfig(virtual_tokens=draw(st.integers(1, 3)))
    return PrefixTuningPEFTConfig(num_virtual_tokens=draw(st.integers(1, 3)), prefix_projection=draw(st.booleans()),
                                  encoder_hidden_size=draw(st.integers(1, 6)))


@st.composite
def model_with_adapters(draw, methods: list[str], max_adapters: int = 1, max_alpha: float = 16):
    """(arch, [(name, config)]): one config per named adapter."""
    arch = draw(st.sampled_from(ARCHS))
    n = draw(st.integers(1, max_adapters))
    return arch, [(name, draw(peft_config(arch, methods, max_alpha))) for name in "abc"[:n]]


def adapted(arch: str, adapters, seed: int):
    model = build(arch)
    for name, cfg in adapters:
        model.add_adapter(cfg, name=name)
    randomize(model, seed)
    return model


@settings(max_examples=10, deadline=None, database=None)
@given(model_with_adapters([*LORA_CLASSES, "ia3", "adapter", "ptuning", "prompt_tuning", "prefix_tuning"], 2),
       st.integers(0, 100))
def test_save_load_gives_identical_logits(case, seed):
    arch, adapters = case
    assume(not {"dora", "qlora"} <= {cfg.method for _, cfg in adapters})  # refused: see the test below
    model = adapted(arch, adapters, seed)
    expected = logits(model)
    with tempfile.TemporaryDirectory() as d:
        model.save_adapters(d)
        fresh = build(arch)  # same seed: same base
        assert fresh.load_adapters(d) == [name for name, _ in adapters]
    assert torch.equal(logits(fresh.eval()), expected)


def test_qlora_refuses_to_quantize_a_host_that_dora_or_a_merged_adapter_needs():
    """Found by the property above: QLoRA quantized the host under an existing DoRA adapter, and every
    later forward failed (the dense weight is gone for good). Now add_adapter refuses and changes nothing."""
    for first, merge in ((DoraPEFTConfig(target_modules=["q_proj"], dim=2), False),
                         (LoraPEFTConfig(target_modules=["q_proj"], dim=2), True)):
        model = build("llama")
        model.add_adapter(first, name="a")
        if merge:
            model.merge_adapters()
        before = logits(model)
        with pytest.raises(ValueError, match=r"QLoRA would quantize decoder\.layers\.0\.self_attention\.linear_qkv, "
                                             r"but adapter\(s\) \['a'\] there need its full-precision weight"):
            model.add_adapter(QLoraPEFTConfig(target_modules=["q_proj"], dim=2, block_size=16), name="b")
        assert model.adapter_names == ["a"] and torch.equal(logits(model), before)


# one adapter of any mergeable method, or several named LoRA / IA3 adapters (stacked DoRA is tested
# below and in test_merge.py)
# alpha <= 4: a larger LoRA scale makes T5's unscaled attention so sharp that fp32 itself is off by
# 1e-3 of the logits (merged and unmerged alike, against fp64), which no merge tolerance can tell from a bug
MERGE_CASES = model_with_adapters(MERGEABLE, 1, max_alpha=4) | model_with_adapters(["lora", "ia3"], 3, max_alpha=4)


@settings(max_examples=10, deadline=None, database=None)
@given(MERGE_CASES, st.integers(0, 100))
def test_merge_keeps_logits_and_unmerge_restores_the_base_weights(case, seed):
    arch, adapters = case
    model = adapted(arch, adapters, seed)
    unmerged, base = logits(model), {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    model.merge_adapters()
    assert model.merged_adapters == [name for name, _ in adapters]
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=1e-5 * max(1.0, unmerged.abs().max().item()))
    model.unmerge_adapters()
    state = model.state_dict()
    for k, v in base.items():  # within 1e-6 of each tensor's scale
        torch.testing.assert_close(state[k], v, rtol=0, atol=1e-6 * max(1.0, v.abs().max().item()), msg=k)


def _stacked(first, second):
    """Named adapters "a" then "b" on the same fused QKV of a tiny Llama, moved off their init."""
    model = build("llama")
    model.add_adapter(first, name="a")
    model.add_adapter(second, name="b")
    randomize(model, 1)
    return model


def test_unmerging_stacked_lora_and_dora_restores_the_base_weights():
    model = _stacked(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2),
                     DoraPEFTConfig(target_modules=["linear_qkv"], dim=2))
    base = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    model.merge_adapters()
    model.unmerge_adapters()
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-5, msg=k)


def test_merging_a_later_adapter_alone_is_refused_and_changes_nothing():
    """Merging IA3 "b" alone would scale W but not LoRA "a"'s update, which runs before it on the same
    host: the logits would change, so it is refused before any weight moves."""
    model = _stacked(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2), IA3PEFTConfig(target_modules=["key"]))
    unmerged = logits(model)
    with pytest.raises(ValueError, match=r"Cannot merge 'b' without 'a'"):
        model.merge_adapters(["b"])
    assert model.merged_adapters == []
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=0)


def test_merging_lora_then_dora_on_one_host_keeps_logits():
    model = _stacked(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2),
                     DoraPEFTConfig(target_modules=["linear_qkv"], dim=2))
    unmerged = logits(model)
    model.merge_adapters()
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=1e-5 * unmerged.abs().max().item())


@settings(max_examples=10, deadline=None, database=None)
@given(model_with_adapters(ROUTABLE, 3), st.integers(0, 100), st.data())
def test_routing_each_row_equals_that_row_with_its_adapter_alone(case, seed, data):
    arch, adapters = case
    model = adapted(arch, adapters, seed)
    route = data.draw(st.lists(st.sampled_from([name for name, _ in adapters] + [None]), min_size=len(ENC),
                               max_size=len(ENC)))
    with model.route(route):
        mixed = logits(model)
    for name in set(route):  # one run per adapter, compared on the rows routed to it
        model.set_active_adapters([] if name is None else [name])
        alone = logits(model)
        rows = [i for i, r in enumerate(route) if r == name]
        torch.testing.assert_close(mixed[rows], alone[rows], rtol=1e-5, atol=1e-5 * alone.abs().max().item())
