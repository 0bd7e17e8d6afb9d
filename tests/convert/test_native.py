import pytest
import torch

from nemo_peft import load_pretrained
from nemo_peft import save_model
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.conftest import make_model


def test_native_round_trip_keeps_logits_and_tokenizer(tmp_path, family):
    model = make_model(family)
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv"], dim=2))  # adapters are not saved
    tok = Tokenizer.byte_level()
    save_model(model, str(tmp_path), tok)
    loaded, tok2 = load_pretrained(str(tmp_path))
    assert loaded.adapter_names == [] and loaded.config == model.config
    ids = torch.randint(0, 97, (2, 7))
    with model.disable_adapters():
        assert torch.equal(loaded(ids), model(ids))
    assert tok2.encode("héllo") == tok.encode("héllo") and tok2.eos_id == tok.eos_id


def test_bf16_load_keeps_rope_frequencies_fp32(tmp_path):
    save_model(make_model("llama"), str(tmp_path))
    model, _ = load_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert model.rotary.inv_freq.dtype == torch.float32
    assert model.embedding.word_embeddings.weight.dtype == torch.bfloat16


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*restore_from_path"):
        load_pretrained(str(tmp_path / "missing.gguf"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        load_pretrained(str(tmp_path / "weights.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_pretrained(str(tmp_path / "empty"))


def test_truncated_native_weights_is_a_clear_error(tmp_path):
    save_model(make_model("llama"), str(tmp_path))
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_pretrained(str(tmp_path))
