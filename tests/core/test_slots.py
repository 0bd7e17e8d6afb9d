"""Adapter slots as child modules that the block's forward reaches by plain attribute lookup."""
import copy

import torch

from nemo_peft.core.slots import AdapterSlot
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.helpers import make_model


def test_slots_are_children_found_without_module_getattr():
    model = make_model("llama", num_layers=2)
    attn = model.decoder.layers[0].self_attention
    for name, child in attn.named_children():
        if isinstance(child, AdapterSlot):
            # in the instance dict (no nn.Module.__getattr__ per check) and the very registered child
            assert attn.__dict__[name] is child is getattr(attn, name)
    assert isinstance(attn.__dict__["lora_qkv"], AdapterSlot)


def test_a_filled_slot_is_seen_through_the_fast_lookup_and_in_copies():
    model = make_model("llama", num_layers=2)
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    base = model(ids)
    model.add_adapter(LoraPEFTConfig(dim=2, alpha=4, lora_B_init_method="normal"))
    attn = model.decoder.layers[0].self_attention
    assert attn.lora_qkv.active and attn.lora_qkv is attn._modules["lora_qkv"]
    out = model(ids)
    assert not torch.allclose(out, base)  # the forward saw the filled slots
    twin = copy.deepcopy(model)
    twin_attn = twin.decoder.layers[0].self_attention
    assert twin_attn.lora_qkv is twin_attn._modules["lora_qkv"] is not attn.lora_qkv
    torch.testing.assert_close(twin(ids), out, rtol=0, atol=0)


def test_assigning_a_slot_again_replaces_it_everywhere():
    model = make_model("llama", num_layers=1)
    attn = model.decoder.layers[0].self_attention
    fresh = AdapterSlot(attn.lora_qkv.spec)
    attn.lora_qkv = fresh
    assert attn.lora_qkv is fresh is attn._modules["lora_qkv"]
