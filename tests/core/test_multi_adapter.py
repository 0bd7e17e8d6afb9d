"""Several named adapters in one model: switching, deleting, per-sample routing, weighted LoRA combination."""
import copy

import pytest
import torch
from torch import nn

from nemo_peft.models.generation import SamplingParams, generate
from nemo_peft.peft.bottleneck import CanonicalAdaptersPEFTConfig
from nemo_peft.peft.ia3 import IA3PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.helpers import make_model, randomize_adapters

IDS = torch.randint(0, 97, (6, 9), generator=torch.Generator().manual_seed(3))
CFGS = {
    "a": LoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=4, alpha=8),
    "b": IA3PEFTConfig(),
    "c": CanonicalAdaptersPEFTConfig(adapter_dim=8),
}


def three_adapter_model():
    model = make_model("llama")
    for seed, (name, cfg) in enumerate(CFGS.items()):
        model.add_adapter(cfg, name=name)
        randomize_adapters(model, seed, std=0.2, name=name, unit_scales=True)
    return model


def only(model, name):
    """An independent model holding just adapter ``name`` (same weights)."""
    single = make_model("llama")
    if name is not None:
        single.add_adapter(CFGS[name], name=name)
        missing, unexpected = single.load_state_dict(model.adapter_state_dict(name), strict=False)
        assert not unexpected
    return single


def test_active_adapter_switching_matches_single_adapter_models():
    model = three_adapter_model()
    assert model.adapter_names == ["a", "b", "c"] and model.active_adapters == ["a", "b", "c"]
    outs = {}
    for name in ("a", "b", "c"):
        model.set_active_adapters(name)
        outs[name] = model(IDS)
        torch.testing.assert_close(outs[name], only(model, name)(IDS), atol=1e-6, rtol=1e-6)
    model.set_active_adapters([])
    torch.testing.assert_close(model(IDS), only(model, None)(IDS), atol=0, rtol=0)
    assert not torch.allclose(outs["a"], outs["b"]) and not torch.allclose(outs["b"], outs["c"])


def test_delete_adapter():
    model = three_adapter_model()
    model.set_active_adapters(["a", "c"])
    before = model(IDS)
    model.delete_adapter("b")
    assert model.adapter_names == ["a", "c"] and model.active_adapters == ["a", "c"]
    assert not any(".adapters.b." in k for k in model.state_dict())
    assert all("b" not in s.adapters and "b" not in s.active for s in model.adapter_slots_by_path().values())
    torch.testing.assert_close(model(IDS), before, atol=0, rtol=0)
    model.add_adapter(CFGS["b"], name="b")  # the name is free again
    assert model.adapter_names == ["a", "c", "b"]
    with pytest.raises(ValueError, match="Unknown adapter 'zz'"):
        model.delete_adapter("zz")


def test_deleting_a_merged_adapter_is_refused():
    model = three_adapter_model()
    model.merge_adapters("a")
    with pytest.raises(RuntimeError, match="unmerge"):
        model.delete_adapter("a")
    assert "a" in model.adapter_names
    model.unmerge_adapters("a")
    model.delete_adapter("a")
    assert model.adapter_names == ["b", "c"]


ROUTE = ["a", "b", None, "a", "c", "__base__"]


def _slot_state(model):
    return {p: (s.routing, s.active) for p, s in model.adapter_slots_by_path().items()}


def test_routing_gives_each_row_its_own_adapter():
    model = three_adapter_model()
    model.set_active_adapters(["c"])  # routing ignores the global active set
    state = _slot_state(model)
    with model.route(ROUTE):
        mixed = model(IDS)
    assert _slot_state(model) == state and model.active_adapters == ["c"]
    for i, name in enumerate(ROUTE):
        model.set_active_adapters([] if name in (None, "__base__") else [name])
        torch.testing.assert_close(mixed[i:i + 1], model(IDS[i:i + 1]), atol=1e-5, rtol=1e-5)


def test_greedy_generation_under_routing_equals_per_row_generation():
    model = three_adapter_model()
    mask = torch.ones_like(IDS)
    mask[1, :3] = 0  # left padding on two rows
    mask[4, :2] = 0
    params = SamplingParams(max_new_tokens=6)
    with model.route(ROUTE):
        mixed = generate(model, IDS, mask, params)
    for i, name in enumerate(ROUTE):
        model.set_active_adapters([] if name in (None, "__base__") else [name])
        assert mixed[i] == generate(model, IDS[i:i + 1], mask[i:i + 1], params)[0], i


def test_routing_errors_and_restore_on_exception():
    model = three_adapter_model()
    state, active = _slot_state(model), model.active_adapters
    with pytest.raises(ValueError, match=r"Unknown adapter.*'zz'"):
        with model.route(["a", "zz"]):
            pass
    with pytest.raises(ValueError, match="6 rows"):
        with model.route(["a", "b"]):
            model(IDS)
    with pytest.raises(TypeError, match="one adapter name"):
        with model.route("a"):
            pass
    with pytest.raises(KeyError):
        with model.route(ROUTE):
            raise KeyError("boom")
    assert _slot_state(model) == state and model.active_adapters == active
    model.merge_adapters("a")
    with pytest.raises(RuntimeError, match="unmerge"):
        with model.route(ROUTE):
            pass


def test_virtual_token_adapters_cannot_be_routed():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2), name="p")
    model.embedding.prompt.add("p", nn.Module())  # stand-in for a prompt-tuning part of adapter "p"
    with pytest.raises(ValueError, match="cannot be routed per sample"):
        with model.route(["p", None]):
            pass


# ---- weighted combination ----
def lora_model():
    model = make_model("llama")
    model.add_adapter(CFGS["a"], name="a")  # q, v parts of linear_qkv in every layer + linear_fc2
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv", "gate_proj"], dim=2, alpha=4, use_rslora=True,
                                     layer_selection=[1, 2]), name="d")  # fused qkv + the gate part
    model.add_adapter(LoraPEFTConfig(target_modules=["o_proj"], dim=3, alpha=5, layer_selection=[3]), name="e")
    model.add_adapter(CFGS["b"], name="b")
    for seed, name in enumerate(["a", "d", "e", "b"]):
        randomize_adapters(model, seed, std=0.2, name=name, unit_scales=True)
    return model


def dense_combination(model, names, weights):
    """The base model with sum_i w_i * s_i * B_i @ A_i added to every host weight."""
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for path, slot in dense.adapter_slots_by_path().items():
            host = getattr(dense.get_submodule(path.rsplit(".", 1)[0]), slot.spec.host or "", None)
            for name, w in zip(names, weights):
                if name in slot.adapters:
                    for start, size, delta in slot.adapters[name].delta_weight():
                        host.weight[start:start + size] += w * delta
    dense.set_active_adapters([])
    return dense


def test_weighted_combination_equals_dense_and_survives_save_load(tmp_path):
    model = lora_model()
    names, weights = ["a", "d", "e"], [0.7, -1.3, 0.5]
    model.set_active_adapters(["b"])
    model.add_weighted_adapter(names, weights, "mix")
    assert model.adapter_names[-1] == "mix" and model.active_adapters == ["b"]  # added inactive
    slots = model.adapter_slots_by_path()
    qkv0 = slots["decoder.layers.0.self_attention.lora_qkv"].adapters["mix"]
    assert len(qkv0.out_slices) == 3 and qkv0.dim == 4 + 2  # a's q, v and d's fused qkv -> q, k, v
    assert slots["decoder.layers.2.self_attention.lora_qkv"].adapters["mix"].dim == 4  # only a there
    assert "mix" not in slots["decoder.layers.0.self_attention.lora_proj"].adapters  # no source there

    model.set_active_adapters("mix")
    combined = model(IDS)
    torch.testing.assert_close(combined, dense_combination(model, names, weights)(IDS), atol=1e-5, rtol=1e-5)
    model.set_active_adapters(names)  # weights of 1 are the sum of the adapters themselves
    model.add_weighted_adapter(names, [1.0, 1.0, 1.0], "sum", activate=False)
    summed = model(IDS)
    model.set_active_adapters("sum")
    torch.testing.assert_close(model(IDS), summed, atol=1e-5, rtol=1e-5)

    model.save_adapters(str(tmp_path / "mix"), name="mix")
    fresh = make_model("llama")
    assert fresh.load_adapters(str(tmp_path / "mix")) == ["mix"]
    assert fresh.adapter_configs("mix") == model.adapter_configs("mix")
    assert torch.equal(fresh(IDS), combined)


def test_weighted_combination_errors():
    model = lora_model()
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        model.add_weighted_adapter(["a", "b"], [1.0, 1.0], "x")
    with pytest.raises(ValueError, match="Unknown adapter"):
        model.add_weighted_adapter(["a", "zz"], [1.0, 1.0], "x")
    with pytest.raises(ValueError, match="one weight per adapter"):
        model.add_weighted_adapter(["a", "d"], [1.0], "x")
    with pytest.raises(ValueError, match="exists"):
        model.add_weighted_adapter(["a"], [1.0], "d")
    assert model.adapter_names == ["a", "d", "e", "b"]
