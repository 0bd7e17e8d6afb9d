"""IA3 and canonical adapters: counts, init, gradients, save/load, merge (IA3), combinations."""
import pytest
import torch

from nemo_peft.models.generation import SamplingParams, generate
from nemo_peft.peft.bottleneck import CanonicalAdaptersPEFTConfig
from nemo_peft.peft.ia3 import IA3PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.peft.ptuning import PtuningPEFTConfig
from tests.helpers import FAMILIES, IDS, make_model, randomize_adapters


def closed_form(family, cfg):
    f = {"num_query_groups": None, **FAMILIES[family]}
    hd = f["hidden_size"] // f["num_attention_heads"]
    kv = (f["num_query_groups"] or f["num_attention_heads"]) * hd
    if isinstance(cfg, IA3PEFTConfig):
        return f["num_layers"] * (2 * kv + f["ffn_hidden_size"])
    h, d = f["hidden_size"], cfg.adapter_dim
    return f["num_layers"] * 2 * (2 * h + 2 * h * d)


@pytest.mark.parametrize("make_cfg", [IA3PEFTConfig, lambda: CanonicalAdaptersPEFTConfig(adapter_dim=4)])
def test_count_init_grads_save_load(family, make_cfg, tmp_path):
    cfg = make_cfg()
    model = make_model(family)
    base = model(IDS)
    model.add_adapter(cfg)
    assert model.num_trainable_parameters() == closed_form(family, cfg)
    assert torch.equal(model(IDS), base)
    randomize_adapters(model)
    model(IDS).logsumexp(-1).mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (".adapters." in n), n
    model.save_adapters(str(tmp_path))
    fresh = make_model(family)
    fresh.load_adapters(str(tmp_path))
    assert torch.equal(fresh(IDS), model(IDS))


def test_ia3_with_lora_merges_exactly_and_unmerges(family):
    model = make_model(family)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter([LoraPEFTConfig(target_modules=["linear_qkv", "linear_fc2"], dim=2), IA3PEFTConfig()])
    randomize_adapters(model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "ia3" in n:
                p.add_(1.0)  # scales around 1, as trained IA3 vectors are
        unmerged = model(IDS)
        model.merge_adapters()
        torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
        model.unmerge_adapters()
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-6, rtol=0)


def test_canonical_options_and_errors():
    model = make_model("llama")
    model.add_adapter(CanonicalAdaptersPEFTConfig(adapter_dim=3, norm_position="none", target_modules=["mlp"],
                                                  layer_selection=[2]))
    filled = [p for p, s in model.adapter_slots_by_path().items() if len(s.adapters)]
    assert filled == ["decoder.layers.1.adapter_post_mlp"]
    assert model.num_trainable_parameters() == 2 * 48 * 3  # no norm
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapters()
    with pytest.raises(ValueError, match="norm_position"):
        CanonicalAdaptersPEFTConfig(norm_position="middle")
    with pytest.raises(ValueError, match="IA3 target_modules"):
        IA3PEFTConfig(target_modules=["query"])


@pytest.mark.parametrize("cfgs", [
    lambda: [PtuningPEFTConfig(virtual_tokens=3, bottleneck_dim=8, embedding_dim=8), CanonicalAdaptersPEFTConfig(adapter_dim=4)],
    lambda: [LoraPEFTConfig(target_modules=["all"], dim=2), IA3PEFTConfig()],
])
def test_combinations_train_save_load_generate(cfgs, tmp_path):
    model = make_model("llama").train()
    model.add_adapter(cfgs())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(IDS[:, :-1]).flatten(0, 1), IDS[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    model.save_adapters(str(tmp_path))
    fresh = make_model("llama")
    fresh.load_adapters(str(tmp_path))
    assert torch.equal(fresh(IDS), model(IDS))
    params = SamplingParams(max_new_tokens=5)
    assert generate(fresh, IDS[:1], params=params) == generate(model, IDS[:1], params=params)
