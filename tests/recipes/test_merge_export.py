"""examples/merge.py: a merged HF export gives the unmerged adapter's logits in transformers."""
import pytest
import torch

from nemo_peft.convert.hf_gpt import save_hf
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.recipes.merge import merge_to_checkpoint
from tests.conftest import make_model

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_merged_export_equals_unmerged_adapter(tmp_path, family):
    tok = Tokenizer.byte_level()
    model = make_model(family, vocab_size=tok.vocab_size)
    save_hf(model, str(tmp_path / "base"), tok)
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=4, alpha=8))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.2)
    model.save_adapters(str(tmp_path / "adapter"))
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        expected = model(ids)
    merge_to_checkpoint(str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), torch_dtype=torch.float32)
    with torch.no_grad():
        got = hf(ids).logits
    assert (got - expected).abs().max() <= 1e-4
    with torch.no_grad(), model.disable_adapters():
        base = model(ids)
    assert (got - base).abs().max() > 1e-3  # the adapter really is in the merged weights


def test_merge_bad_format(tmp_path):
    with pytest.raises(ValueError, match="format"):
        merge_to_checkpoint(None, str(tmp_path), str(tmp_path / "o"), fmt="onnx")
