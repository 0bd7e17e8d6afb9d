import pytest
import torch

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
