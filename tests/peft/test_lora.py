import copy

import pytest
import torch
import torch.nn.functional as F

from nemo_peft.peft.lora import LoraAdapter, LoraPEFTConfig
from tests.helpers import IDS, assert_only_adapters_get_grads, make_model, randomize_adapters


def test_output_unchanged_after_add_adapter(family):
    model = make_model(family)
    before = model(IDS)
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=4))
    assert torch.equal(model(IDS), before)
    randomize_adapters(model)
    assert not torch.allclose(model(IDS), before)  # the adapter is really in the forward path


def test_only_adapter_params_train_and_get_gradients(family):
    model = make_model(family)
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=4))
    randomize_adapters(model)
    model(IDS).logsumexp(-1).mean().backward()
    assert_only_adapters_get_grads(model)


def test_training_changes_only_adapter_tensors(family):
    model = make_model(family).train()
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=4))
    base = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    adapters = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(IDS[:, :-1]).flatten(0, 1), IDS[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    for k, v in base.items():
        assert torch.equal(after[k], v), f"base tensor {k} changed"
    for k, v in adapters.items():
        assert not torch.equal(after[k], v), f"adapter tensor {k} did not train"


def test_save_load_into_fresh_model_gives_identical_logits(tmp_path, family):
    model = make_model(family)
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=3, alpha=6))
    randomize_adapters(model)
    model.save_adapters(str(tmp_path / "ad"))
    fresh = make_model(family)  # same seed -> same base weights
    fresh.load_adapters(str(tmp_path / "ad"))
    assert torch.equal(fresh(IDS), model(IDS))
    assert fresh.adapter_configs("default")[0] == model.adapter_configs("default")[0]


def _dense_merge(model):
    """Reference: fold every LoRA into a dense copy of its host weight, rows by part."""
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in dense.named_modules():
            for spec in (s for s in getattr(type(module), "adapter_slots", ()) if s.kind == "lora"):
                slot = getattr(module, spec.name)
                host = getattr(module, spec.host)
                for ad in slot.adapters.values():
                    b_off = 0
                    for p, (start, size) in enumerate(ad.out_slices):
                        a = ad.lora_a[p * ad.dim:(p + 1) * ad.dim]
                        b = ad.lora_b[b_off:b_off + size]
                        host.weight[start:start + size] += ad.scale * (b @ a)
                        b_off += size
    dense.set_active_adapters([])
    return dense


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["linear_qkv"], ["k_proj", "gate_proj", "o_proj"]])
def test_lora_equals_dense_recomputation(targets):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=targets, dim=4, alpha=8))
    randomize_adapters(model)
    torch.testing.assert_close(model(IDS), _dense_merge(model)(IDS), atol=1e-5, rtol=1e-5)


def test_qv_lora_touches_exactly_the_q_and_v_columns():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=4))
    randomize_adapters(model)
    attn = model.decoder.layers[0].self_attention
    x = torch.randn(2, 5, 48)
    base = attn.linear_qkv(x)
    delta = attn.lora_qkv(x, base.clone()) - base
    q, k, v = (attn.output_parts["linear_qkv"][p] for p in "qkv")
    ad = attn.lora_qkv.adapters["default"]
    assert ad.out_slices == [q, v]
    assert ad.lora_a.shape == (2 * 4, 48) and ad.lora_b.shape == (q[1] + v[1], 4)
    assert torch.all(delta[..., k[0]:k[0] + k[1]] == 0)
    assert delta[..., q[0]:q[0] + q[1]].abs().sum() > 0 and delta[..., v[0]:v[0] + v[1]].abs().sum() > 0


def filled_slots(model):
    return sorted(p for p, s in model.adapter_slots_by_path().items() if len(s.adapters))


@pytest.mark.parametrize("targets,expected", [
    (["*.layers.0.*.linear_qkv"], ["decoder.layers.0.self_attention.lora_qkv"]),
    ([r"decoder\.layers\.[12]\.mlp\.linear_fc2"], ["decoder.layers.1.mlp.lora_fc2", "decoder.layers.2.mlp.lora_fc2"]),
    (["attention_dense"], [f"decoder.layers.{i}.self_attention.lora_proj" for i in range(3)]),
    (["down_proj"], [f"decoder.layers.{i}.mlp.lora_fc2" for i in range(3)]),
])
def test_target_matching(targets, expected):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=targets, dim=2))
    assert filled_slots(model) == expected


def test_nemo_group_names_and_layer_selection():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["attention"], dim=2, layer_selection=[2]))
    assert filled_slots(model) == ["decoder.layers.1.self_attention.lora_proj",
                                   "decoder.layers.1.self_attention.lora_qkv"]


def test_gpt2_hf_names():
    model = make_model("gpt2")
    model.add_adapter(LoraPEFTConfig(target_modules=["c_attn", "c_proj"], dim=2))
    slots = model.adapter_slots_by_path()
    assert filled_slots(model) == sorted(
        [f"decoder.layers.{i}.self_attention.lora_qkv" for i in range(3)]
        + [f"decoder.layers.{i}.self_attention.lora_proj" for i in range(3)]
        + [f"decoder.layers.{i}.mlp.lora_fc2" for i in range(3)])
    qkv = slots["decoder.layers.0.self_attention.lora_qkv"].adapters["default"]
    assert qkv.out_slices == [(0, 3 * 48)]  # c_attn is fused: one A, one B


def test_unknown_target_is_a_clear_error():
    model = make_model("llama")
    with pytest.raises(ValueError) as e:
        model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv", "query_key_value"]))
    msg = str(e.value)
    assert "query_key_value" in msg and "linear_qkv" in msg and "q_proj" in msg and "attention_qkv" in msg
    assert model.adapter_names == []  # nothing half-added


def test_layer_selection_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="layer_selection"):
        make_model("llama").add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], layer_selection=[9]))


def test_trainable_count_matches_closed_form():
    model = make_model("llama")  # hidden 48, 6 heads of 8, 2 kv groups, ffn 80, 3 layers
    r = 4
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], dim=r))
    q, v = 48, 16
    per_layer = (2 * r * 48 + r * (q + v)) + (2 * r * 48 + r * (80 + 80)) + (r * 80 + r * 48)
    assert model.num_trainable_parameters() == 3 * per_layer
    summary = model.trainable_parameters_summary()
    assert f"trainable params: {3 * per_layer:,}" in summary and "lora_fc1" in summary


def test_disable_and_enable_adapters():
    model = make_model("llama")
    base = model(IDS)
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2))
    randomize_adapters(model)
    adapted = model(IDS)
    with model.disable_adapters():
        assert torch.equal(model(IDS), base)
    assert torch.equal(model(IDS), adapted)
    model.set_enabled_adapters(enabled=False)
    assert torch.equal(model(IDS), base)
    model.set_enabled_adapters("default", enabled=True)
    assert torch.equal(model(IDS), adapted)


def test_nemo_aliases_and_unknown_option():
    cfg = LoraPEFTConfig.from_kwargs({"adapter_dim": 8, "adapter_dropout": 0.1, "column_init_method": "kaiming"})
    assert (cfg.dim, cfg.dropout, cfg.lora_A_init_method) == (8, 0.1, "kaiming")
    with pytest.raises(ValueError, match="rank"):
        LoraPEFTConfig.from_kwargs({"rank": 8})


@pytest.mark.parametrize("position", ["pre", "post"])
def test_dropout_only_in_training(position):
    ad = LoraAdapter(8, [(0, 6)], dim=2, alpha=2, dropout=0.5, dropout_position=position, b_init="normal")
    x, out = torch.randn(4, 8), torch.zeros(4, 6)
    ad.eval()
    assert torch.equal(ad(x, out.clone()), ad(x, out.clone()))  # the adapter may add into out in place
    ad.train()
    torch.manual_seed(0)
    assert not torch.equal(ad(x, out.clone()), ad.eval()(x, out.clone()))


def test_update_is_added_into_the_host_output_and_matches_the_dense_formula():
    ad = LoraAdapter(8, [(0, 6)], dim=2, alpha=3, b_init="normal")
    x, out = torch.randn(2, 4, 8), torch.randn(2, 4, 6)
    want = out + (x @ ad.lora_a.T @ ad.lora_b.T) * ad.scale
    with torch.no_grad():
        got = ad(x, out)
    torch.testing.assert_close(got, want)
    assert got.data_ptr() == out.data_ptr()  # no [tokens, out_features] product allocated and added


@pytest.mark.parametrize("host", ["3d", "2d", "3d_with_bias"])
def test_training_update_adds_into_the_output_without_copies_in_backward(host):
    """Under autograd the update goes into the host output itself (baddbmm_/addmm_), or into a new tensor
    when that output is a view (a linear with bias): never in place into a view of it, which backward
    would replay as a zero-fill and copies of the whole output (CopySlices). Values and gradients are
    those of the dense formula."""
    ad = LoraAdapter(8, [(0, 6)], dim=2, alpha=3, b_init="normal")
    x = torch.randn(2, 4, 8, requires_grad=True)
    w_host, bias = torch.randn(6, 8, requires_grad=True), torch.randn(6)
    inp = x.reshape(8, 8) if host == "2d" else x
    out = F.linear(inp, w_host, bias if host == "3d_with_bias" else None)
    ptr, is_view = out.data_ptr(), out._is_view()
    got = ad(inp, out)
    assert is_view == (host == "3d_with_bias") and (got.data_ptr() == ptr) != is_view
    names, stack = set(), [got.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None:
            names.add(type(fn).__name__)
            stack.extend(f for f, _ in fn.next_functions)
    assert not any("CopySlices" in n or "AsStrided" in n for n in names)
    g = torch.randn(got.shape)
    params = [x, w_host, ad.lora_a, ad.lora_b]
    grads = torch.autograd.grad((got * g).sum(), params)
    want = F.linear(inp, w_host, bias if host == "3d_with_bias" else None) \
        + (inp @ ad.lora_a.T @ ad.lora_b.T) * ad.scale
    torch.testing.assert_close(got, want)
    for a, b in zip(grads, torch.autograd.grad((want * g).sum(), params)):
        torch.testing.assert_close(a, b)


def test_inference_cache_of_the_expanded_b_follows_updates():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=2))
    randomize_adapters(model)
    with torch.no_grad():
        first = model(IDS)
        assert torch.equal(model(IDS), first)  # served from the cache
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.mul_(2.0)  # in place, as an optimizer step: the cache must notice
        changed = model(IDS)
    assert not torch.equal(changed, first)
    torch.testing.assert_close(model(IDS), changed, rtol=0, atol=0)  # grad mode builds B afresh: same result


def test_module_path_targets_select_hosts_and_parts():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["decoder.layers.0.self_attention.linear_qkv.v",
                                                     "*.layers.1.mlp.linear_fc1.up", "decoder.layers.2.mlp.linear_fc2"],
                                     dim=2))
    got = {path: ad.out_slices for path, slot in model.adapter_slots_by_path().items()
           for ad in slot.adapters.values()}
    attn = model.decoder.layers[0].self_attention
    mlp = model.decoder.layers[1].mlp
    assert got == {"decoder.layers.0.self_attention.lora_qkv": [attn.output_parts["linear_qkv"]["v"]],
                   "decoder.layers.1.mlp.lora_fc1": [mlp.output_parts["linear_fc1"]["up"]],
                   "decoder.layers.2.mlp.lora_fc2": [(0, 48)]}


# ---- the parts API: the one place that knows the stacked lora_a / lora_b layout ----
def test_delta_weight_and_parts_equal_the_dense_update_of_forward():
    slices = [(0, 5), (9, 3), (14, 4)]  # q, v-like parts of an 18-row fused host; rows 5..9, 12..14 skipped
    ad = LoraAdapter(7, slices, dim=3, alpha=5, b_init="normal").double()
    # forward on the identity: ad(I, 0)[i, o] = the update's weight W[o, i], from the stacked tensors
    dense = ad(torch.eye(7, dtype=torch.float64), torch.zeros(7, 18, dtype=torch.float64)).T
    from_parts = torch.zeros(18, 7, dtype=torch.float64)
    for part in ad.parts():
        assert (part.start, part.size) == slices[part.index]
        assert part.a.shape == (3, 7) and part.b.shape == (part.size, 3)
        from_parts[part.start:part.start + part.size] += ad.scale * part.b @ part.a
    from_delta = torch.zeros(18, 7, dtype=torch.float64)
    for start, size, delta in ad.delta_weight():
        from_delta[start:start + size] += delta.double()
    torch.testing.assert_close(from_parts, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(from_delta, dense, rtol=1e-6, atol=1e-6)  # delta_weight is fp32
    assert dense[5:9].abs().sum() == 0 and dense[12:14].abs().sum() == 0


def test_write_part_round_trips_and_zero_pads_a_lower_rank():
    ad = LoraAdapter(6, [(0, 4), (4, 2)], dim=3, alpha=3, b_init="normal").to(torch.bfloat16)
    a0, b0 = (t.clone() for t in ad.part_weights(0))
    a, b = torch.randn(2, 6), torch.randn(2, 2)  # fp32, rank 2 < dim 3
    ad.write_part(1, a, b)
    a1, b1 = ad.part_weights(1)
    assert a1.dtype == torch.bfloat16 and torch.equal(a1[:2], a.to(torch.bfloat16)) and not a1[2:].any()
    assert torch.equal(b1[:, :2], b.to(torch.bfloat16)) and not b1[:, 2:].any()
    assert torch.equal(ad.part_weights(0)[0], a0) and torch.equal(ad.part_weights(0)[1], b0)  # part 0 untouched
    assert a1.data_ptr() == ad.lora_a[3:].data_ptr()  # views into the stacked tensors, not copies
    full_a, full_b = torch.randn(3, 6), torch.randn(4, 3)
    ad.write_part(0, full_a, full_b)
    assert torch.equal(ad.part_weights(0)[0], full_a.to(torch.bfloat16))
    with pytest.raises(ValueError, match="r <= 3"):
        ad.write_part(0, torch.zeros(4, 6), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="B \\[2, r\\]"):
        ad.write_part(1, torch.zeros(3, 6), torch.zeros(4, 3))


def test_weighted_combination_refuses_dora():
    from nemo_peft.peft.dora import DoraPEFTConfig

    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2), name="l")
    model.add_adapter(DoraPEFTConfig(target_modules=["linear_qkv"], dim=2), name="d")
    for names in (["l", "d"], ["d", "l"]):  # a DoRA source, second or first (its config class dispatches)
        with pytest.raises(ValueError, match="'d' is DoRA"):
            model.add_weighted_adapter(names, [1.0, 1.0], "mix")
    assert model.adapter_names == ["l", "d"]


def test_weighted_combination_of_qlora_adapters_is_plain_lora():
    pytest.importorskip("torchao")
    from nemo_peft.peft.qlora import QLoraPEFTConfig

    model = make_model("llama")
    model.add_adapter(QLoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=2, block_size=16), name="q1")
    model.add_adapter(QLoraPEFTConfig(target_modules=["linear_qkv"], dim=3, block_size=16), name="q2")
    randomize_adapters(model)
    model.set_active_adapters(["q1", "q2"])
    both = model(IDS)
    model.add_weighted_adapter(["q1", "q2"], [1.0, 1.0], "mix")  # dispatched by QLoraPEFTConfig
    assert {type(c) for c in model.adapter_configs("mix")} == {LoraPEFTConfig}
    model.set_active_adapters("mix")
    torch.testing.assert_close(model(IDS), both, atol=1e-5, rtol=1e-5)
