import pytest
import torch

from nemo_peft.peft.dora import DoraPEFTConfig
from nemo_peft.peft.ia3 import IA3PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.helpers import IDS, make_model, randomize_adapters


@pytest.mark.parametrize("targets", [["all"], ["q_proj", "v_proj", "up_proj"]])
def test_merge_equals_unmerged_and_unmerge_restores(family, targets):
    model = make_model(family)
    if family == "gpt2" and "up_proj" in targets:
        targets = ["q_proj", "v_proj", "c_fc"]
    base = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter(LoraPEFTConfig(target_modules=targets, dim=4, alpha=8))
    randomize_adapters(model)
    unmerged = model(IDS)
    model.merge_adapters()
    assert model.merged_adapters == ["default"]
    changed = [k for k, v in base.items() if not torch.equal(model.state_dict()[k], v)]
    assert changed and all("linear_" in k and k.endswith("weight") for k in changed)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge"):
        with model.disable_adapters():
            pass
    model.unmerge_adapters()
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)


def test_merge_uses_alpha_over_dim_scaling():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_proj"], dim=2, alpha=10))
    randomize_adapters(model)
    host = model.decoder.layers[0].self_attention.linear_proj
    ad = model.decoder.layers[0].self_attention.lora_proj.adapters["default"]
    before = host.weight.clone()
    model.merge_adapters()
    torch.testing.assert_close(host.weight - before, 5.0 * ad.lora_b @ ad.lora_a, atol=1e-6, rtol=1e-5)


def test_merge_twice_is_a_no_op_and_unknown_name_errors():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2))
    randomize_adapters(model)
    model.merge_adapters()
    w = model.decoder.layers[0].mlp.linear_fc1.weight.clone()
    model.merge_adapters("default")
    assert torch.equal(model.decoder.layers[0].mlp.linear_fc1.weight, w)
    with pytest.raises(ValueError, match="Unknown adapter"):
        model.merge_adapters("nope")


# ---- several adapters on one host: merge in forward order, unmerge in exact reverse ----
def _stack(*cfgs):
    """Adapters 'a', 'b', ... on a tiny Qwen2-style model (QKV bias), moved off their init."""
    model = make_model("qwen2")
    for name, cfg in zip("abc", cfgs):
        model.add_adapter(cfg, name=name)
    # A, B and IA3 scales plus noise; DoRA magnitudes m * (1 + noise): m near 0 would make unmerging ill-posed
    for seed, marker in enumerate([".lora_a", ".lora_b", ".scale"]):
        randomize_adapters(model, seed, add=True, marker=marker)
    return randomize_adapters(model, marker="<no parameter>", magnitude_jitter=0.2)  # the magnitudes only


def _base(model):
    return {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}


def _assert_restored(model, base, rel=1e-6):
    for k, v in base.items():  # within rel of each tensor's largest entry
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=rel * v.abs().max().item(), msg=k)


QKV_LORA = lambda: LoraPEFTConfig(target_modules=["linear_qkv", "linear_fc2"], dim=2, alpha=4)  # noqa: E731
QKV_DORA = lambda: DoraPEFTConfig(target_modules=["linear_qkv", "linear_fc2"], dim=2, alpha=4)  # noqa: E731
IA3_ALL = lambda: IA3PEFTConfig(target_modules=["key", "value", "mlp"])  # noqa: E731


@pytest.mark.parametrize("first,second", [
    (QKV_LORA, IA3_ALL), (QKV_LORA, QKV_LORA), (QKV_LORA, QKV_DORA), (QKV_DORA, QKV_LORA), (QKV_DORA, IA3_ALL),
    (QKV_DORA, QKV_DORA)], ids=["lora+ia3", "lora+lora", "lora+dora", "dora+lora", "dora+ia3", "dora+dora"])
def test_stacked_merge_keeps_output_and_unmerge_restores_the_weights(first, second):
    model = _stack(first(), second())
    base, unmerged = _base(model), model(IDS)
    model.merge_adapters()
    assert model.merged_adapters == ["a", "b"]
    torch.testing.assert_close(model(IDS), unmerged, rtol=0, atol=1e-5 * unmerged.abs().max().item())
    model.unmerge_adapters()
    assert model.merged_adapters == []
    _assert_restored(model, base, rel=1e-5 if QKV_DORA in (first, second) else 1e-6)  # DoRA divides by m/n
    torch.testing.assert_close(model(IDS), unmerged, rtol=0, atol=1e-5 * unmerged.abs().max().item())


def test_merging_a_later_adapter_alone_is_refused_before_touching_anything():
    model = _stack(QKV_LORA(), IA3PEFTConfig(target_modules=["key"]))  # IA3 scales a's update to the k rows
    base, unmerged = _base(model), model(IDS)
    with pytest.raises(ValueError, match=r"Cannot merge 'b' without 'a': 'a' runs before it on "
                                         r"decoder\.layers\.0\.self_attention\.linear_qkv .* merge \['a', 'b'\] "
                                         r"together \(or 'a' first\)"):
        model.merge_adapters("b")
    assert model.merged_adapters == []
    _assert_restored(model, base)
    model.merge_adapters("a")  # the earlier one alone is fine, and so is the later one after it
    model.merge_adapters("b")
    torch.testing.assert_close(model(IDS), unmerged, rtol=0, atol=1e-5 * unmerged.abs().max().item())


def test_unmerging_an_earlier_adapter_first_is_refused_before_touching_anything():
    model = _stack(QKV_LORA(), IA3PEFTConfig(target_modules=["key"]))
    base = _base(model)
    model.merge_adapters()
    merged = _base(model)
    with pytest.raises(ValueError, match=r"Cannot unmerge 'a' while 'b' stays merged: .* unmerge 'b' first"):
        model.unmerge_adapters("a")
    assert model.merged_adapters == ["a", "b"]
    _assert_restored(model, merged)
    model.unmerge_adapters("b")
    model.unmerge_adapters("a")
    _assert_restored(model, base)


def test_two_lora_updates_commute_so_either_merges_and_unmerges_alone():
    model = _stack(QKV_LORA(), QKV_LORA())
    base, unmerged = _base(model), model(IDS)
    model.merge_adapters("b")
    torch.testing.assert_close(model(IDS), unmerged, rtol=0, atol=1e-5 * unmerged.abs().max().item())
    model.merge_adapters("a")
    model.unmerge_adapters("b")
    model.unmerge_adapters("a")
    _assert_restored(model, base)


def test_dora_after_lora_normalises_the_lora_updated_weight():
    """DoRA's input already holds the LoRA update before it, so its norm does too: adding it leaves the
    output unchanged, and merging the LoRA adapter alone (into that weight) changes nothing either."""
    model = _stack(QKV_LORA())
    before = model(IDS)
    model.add_adapter(QKV_DORA(), name="b")
    torch.testing.assert_close(model(IDS), before, rtol=0, atol=1e-6 * before.abs().max().item())
    randomize_adapters(model, 1, name="b", add=True, magnitude_jitter=0.2)
    unmerged = model(IDS)
    model.merge_adapters("a")
    torch.testing.assert_close(model(IDS), unmerged, rtol=0, atol=1e-5 * unmerged.abs().max().item())
    model.unmerge_adapters("a")
    torch.testing.assert_close(model(IDS), unmerged, rtol=0, atol=1e-5 * unmerged.abs().max().item())
    with pytest.raises(ValueError, match="Cannot merge 'b' without 'a'"):  # b's update would skip a's
        model.merge_adapters("b")


def test_unmerge_follows_the_merge_order_even_after_the_active_order_changes():
    model = _stack(QKV_DORA(), QKV_LORA())
    base = _base(model)
    model.merge_adapters()
    model.set_active_adapters(["b", "a"])  # forward order now b, a: the weight still holds a, then b
    model.unmerge_adapters()
    _assert_restored(model, base, rel=1e-5)
