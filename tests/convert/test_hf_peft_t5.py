"""HF PEFT LoRA adapters for T5 <-> ours, both directions, checked against the real ``peft``."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_peft import load_adapters, save_hf_peft
from nemo_peft.convert.hf_t5 import load_hf_t5
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.helpers import randomize_adapters

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
TOL = 1e-4
VOCAB = 101
G = torch.Generator().manual_seed(5)
ENC = torch.randint(2, VOCAB, (2, 9), generator=G)
DEC = torch.randint(2, VOCAB, (2, 6), generator=G)
MASK = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])  # the second row is padded
CASES = ["t5_relu_tied", "t5v1_1_gated_gelu_untied"]


def hf_logits(model):
    with torch.no_grad():
        return model(input_ids=ENC, attention_mask=MASK, decoder_input_ids=DEC).logits


def our_logits(model):
    with torch.no_grad():
        return model(ENC, MASK, DEC)


def peft_model(hf_model, adapter_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.PeftModel.from_pretrained(hf_model, adapter_dir).eval()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("targets", [
    ["q", "v"],  # self-attention q/v parts and cross-attention linear_q (whole) + linear_kv's v part
    ["all"],  # every host, fused: linear_qkv, linear_proj, linear_q, linear_kv, fc1, fc2
    ["decoder.layers.*.cross_attention.linear_kv", "wo", "*.linear_qkv.k"],  # paths and part paths
])
def test_our_t5_adapter_loads_in_peft_with_the_same_logits(tmp_path, case, targets, hf_t5_checkpoint):
    hf_model, path = hf_t5_checkpoint(tmp_path, case)
    model, _ = load_hf_t5(path)
    model.add_adapter(LoraPEFTConfig(target_modules=targets, dim=3, alpha=6))
    randomize_adapters(model, std=0.2, marker="lora_b")
    randomize_adapters(model, seed=1, std=0.2, marker="lora_a")
    expected = our_logits(model)
    assert (expected - our_logits(load_hf_t5(path)[0])).abs().max() > 1e-3  # the adapter changes the output
    out = str(tmp_path / "peft_adapter")
    cfg = save_hf_peft(model, out, base_model_name_or_path=path)
    assert cfg["task_type"] == "SEQ_2_SEQ_LM"
    pm = peft_model(hf_model, out)
    try:
        assert (hf_logits(pm) - expected).abs().max() <= TOL
    finally:
        pm.unload()  # give the cached transformers model back without the LoRA layers


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("targets", [["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"], ["q", "v"], ["k", "o"]])
def test_peft_t5_adapter_loads_here_with_the_same_logits(tmp_path, case, targets, hf_t5_checkpoint):
    hf_model, path = hf_t5_checkpoint(tmp_path, case)
    names = {n.rsplit(".", 1)[-1] for n, _ in hf_model.named_modules()}
    cfg = peft.LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8, target_modules=[t for t in targets if t in names],
                          rank_pattern={"o": 2}, alpha_pattern={"EncDecAttention.q": 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(hf_model, cfg)
    try:
        randomize_adapters(pm, std=0.2, marker="lora_B")
        expected = hf_logits(pm.eval())
        out = str(tmp_path / "from_peft")
        pm.save_pretrained(out)
    finally:
        pm.unload()
    model, _ = load_hf_t5(path)
    load_adapters(model, out)  # dispatches HF-PEFT directories
    assert (our_logits(model) - expected).abs().max() <= TOL
    # what the file held round-trips: saved again natively and reloaded into a fresh base
    model.save_adapters(str(tmp_path / "native"))
    fresh, _ = load_hf_t5(path)
    fresh.load_adapters(str(tmp_path / "native"))
    assert torch.equal(our_logits(fresh), our_logits(model))


def test_t5_file_with_a_module_this_model_lacks_is_a_clear_error(tmp_path, hf_t5_checkpoint):
    hf_model, path = hf_t5_checkpoint(tmp_path, "t5_relu_tied")
    model, _ = load_hf_t5(path)
    model.add_adapter(LoraPEFTConfig(target_modules=["q"], dim=2))
    out = str(tmp_path / "ad")
    save_hf_peft(model, out, base_model_name_or_path=path)
    small = load_hf_t5(path)[0]
    # a decoder layer the model does not have
    tensors = load_file(os.path.join(out, "adapter_model.safetensors"))
    key = next(k for k in tensors if "decoder.block.0.layer.1.EncDecAttention.q.lora_A" in k)
    for k in (key, key.replace("lora_A", "lora_B")):
        tensors[k.replace("block.0", "block.7")] = tensors[k].clone()
    save_file(tensors, os.path.join(out, "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"decoder\.block\.7\.layer\.1\.EncDecAttention\.q.*no counterpart"):
        load_adapters(small, out)
    assert small.adapter_names == []
    assert json.load(open(os.path.join(out, "adapter_config.json")))["peft_type"] == "LORA"


def test_merged_t5_checkpoint_loads_in_transformers_with_the_adapters_logits(tmp_path, hf_t5_checkpoint):
    from nemo_peft.recipes.export import to_hf_peft
    from nemo_peft.recipes.merge import merge_to_checkpoint

    _, path = hf_t5_checkpoint(tmp_path, "t5v1_1_gated_gelu_untied")
    model, _ = load_hf_t5(path)
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2, alpha=4))
    randomize_adapters(model, std=0.2, marker="lora_b")
    expected = our_logits(model)
    model.save_adapters(str(tmp_path / "ad"))
    merge_to_checkpoint(path, str(tmp_path / "ad"), str(tmp_path / "merged"))
    merged = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "merged")).eval()
    assert (hf_logits(merged) - expected).abs().max() <= TOL
    # the export recipe writes the same adapter for peft
    cfg = to_hf_peft(path, str(tmp_path / "ad"), str(tmp_path / "peft"))
    assert set(cfg["target_modules"]) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
