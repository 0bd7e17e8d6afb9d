"""Adapters record their base model; loading onto another base is an error (or, asked for, a warning)."""
import json
import warnings

import pytest
import torch

from nemo_peft import load_adapters, load_pretrained, save_hf, save_hf_peft, save_model
from nemo_peft.core.fingerprint import base_fingerprint, differences
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.conftest import make_model

IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


def _perturb_one_host_weight(model):
    with torch.no_grad():
        model.decoder.layers[1].mlp.linear_fc2.weight.add_(0.01 * torch.randn_like(
            model.decoder.layers[1].mlp.linear_fc2.weight))


def test_adapter_onto_a_perturbed_base_is_an_error_then_a_warning(tmp_path):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=4))
    model.save_adapters(str(tmp_path / "ad"))
    other = make_model("llama")
    _perturb_one_host_weight(other)
    with pytest.raises(ValueError, match=r"another base model.*linear_fc2.*strict_base=False"):
        other.load_adapters(str(tmp_path / "ad"))
    assert other.adapter_names == []  # nothing half-added
    with pytest.warns(UserWarning, match="another base model.*Loading anyway"):
        assert other.load_adapters(str(tmp_path / "ad"), strict_base=False) == ["default"]
    same = make_model("llama")  # the unchanged base loads silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_adapters(str(tmp_path / "ad"))


def test_another_seed_another_config_another_tokenizer_all_differ():
    a, b = make_model("llama", seed=0), make_model("llama", seed=1)
    assert any("hold other values" in d for d in differences(base_fingerprint(a), base_fingerprint(b)))
    c = make_model("llama", rotary_base=500000.0)
    assert any("rotary_base" in d for d in differences(base_fingerprint(a), base_fingerprint(c)))
    fa, fb = base_fingerprint(a), base_fingerprint(a)
    fa["tokenizer_vocab_sha256"], fb["tokenizer_vocab_sha256"] = "0" * 64, "1" * 64
    assert any("tokenizer" in d for d in differences(fa, fb))


def test_fingerprint_is_about_values_not_file_format(tmp_path):
    """The embedded SmolLM2 from GGUF, from our native copy, from an HF copy and in bf16: one base."""
    gguf, tok = load_pretrained(None)
    gguf.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=2))
    gguf.save_adapters(str(tmp_path / "ad"))
    save_model(gguf, str(tmp_path / "native"), tok)
    save_hf(gguf, str(tmp_path / "hf"), tok)
    for path, dtype in ((tmp_path / "native", torch.float32), (tmp_path / "hf", torch.float32),
                        (tmp_path / "hf", torch.bfloat16)):
        copy, _ = load_pretrained(str(path), dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert copy.load_adapters(str(tmp_path / "ad")) == ["default"]
    perturbed, _ = load_pretrained(str(tmp_path / "native"))
    _perturb_one_host_weight(perturbed)
    with pytest.raises(ValueError, match="another base model"):
        perturbed.load_adapters(str(tmp_path / "ad"))


def test_hf_peft_export_carries_the_fingerprint_and_import_checks_it(tmp_path):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=4))
    save_hf_peft(model, str(tmp_path / "hf"), base_model_name_or_path="my/base")
    assert json.load(open(tmp_path / "hf" / "adapter_config.json"))["base_model_name_or_path"] == "my/base"
    other = make_model("llama")
    _perturb_one_host_weight(other)
    with pytest.raises(ValueError, match="another base model"):
        load_adapters(other, str(tmp_path / "hf"))
    (tmp_path / "hf" / "nemo_peft_base.json").unlink()  # as peft itself writes it: no fingerprint
    with pytest.warns(UserWarning, match="records no base-model fingerprint"):
        load_adapters(make_model("llama"), str(tmp_path / "hf"))


def test_resuming_a_checkpoint_on_another_base_is_an_error():
    from nemo_peft.models.gpt_sft import GPTSFTModel

    def module(perturb):
        model = make_model("llama")
        if perturb:
            _perturb_one_host_weight(model)
        model.add_adapter(LoraPEFTConfig(target_modules=["q_proj"], dim=2))
        return GPTSFTModel(model)

    checkpoint = {"state_dict": {}}
    module(False).on_save_checkpoint(checkpoint)
    module(False).on_load_checkpoint(checkpoint)  # same base: fine
    with pytest.raises(ValueError, match=r"checkpoint's adapter 'default' was trained on another base model"):
        module(True).on_load_checkpoint(checkpoint)


def test_fingerprint_reads_the_logical_values_whatever_the_layout():
    """Base weights are stored column-major; the sampled values are those of the row-major flattening,
    so fingerprints saved before the layout change (or from a row-major twin) still match."""
    model = make_model()
    col = base_fingerprint(model)
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.contiguous()  # row-major
    row = base_fingerprint(model)
    assert col == row and not differences(col, row)
    flat = model.output_weight().reshape(-1)
    assert col["weights"]["<embedding>"]["sample"][0] == float(flat[0])
