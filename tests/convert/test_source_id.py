"""base_model_name_or_path of HF-PEFT exports: the Hub id a GGUF's metadata spells (the embedded
SmolLM2 file -> HuggingFaceTB/SmolLM2-135M-Instruct), remembered at load; --base-model-name overrides."""
import json

import pytest

from nemo_peft import load_pretrained, save_hf_peft
from nemo_peft.convert.gguf import gguf_default_path
from nemo_peft.convert.source_id import gguf_repo_id, hub_cache_id
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.recipes.export import to_hf_peft
from tests.helpers import make_model

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("meta, name, expected", [
    ({"general.source.huggingface.repository": "org/model", "general.organization": "Other"}, "x.gguf", "org/model"),
    ({"general.source.repo_url": "https://huggingface.co/org/model"}, "x.gguf", "org/model"),
    ({"general.base_model.count": 1, "general.base_model.0.repo_url": "https://huggingface.co/org/base"},
     "x.gguf", "org/base"),
    ({"general.base_model.count": 2, "general.base_model.0.repo_url": "https://huggingface.co/org/base",
      "general.organization": "Org"}, "Merged-7B.Q8_0.gguf", "Org/Merged-7B"),  # a merge: no single base
    ({"general.source.url": "https://example.com/m", "general.organization": "HuggingFaceTB"},
     "SmolLM2-135M-Instruct.Q4_1.gguf", SMOL),
    ({"general.organization": "Qwen"}, "Qwen2-0.5B-Instruct-Q4_K_M.gguf", "Qwen/Qwen2-0.5B-Instruct"),
    ({"general.organization": "Qwen"}, "qwen2-0.5b-instruct-iq3_xs.gguf", "Qwen/qwen2-0.5b-instruct"),
    ({"general.organization": "TinyLlama"}, "tinyllama-1.1b.f16.gguf", "TinyLlama/tinyllama-1.1b"),
    ({"general.organization": "Meta Llama"}, "Llama-3.2-1B-Instruct-Q4_K_M.gguf", None),  # not an id
    ({}, "model.gguf", None),
])
def test_gguf_repo_id(meta, name, expected):
    assert gguf_repo_id(meta, f"/models/{name}") == expected


def test_hub_cache_id():
    assert hub_cache_id("/c/hub/models--HuggingFaceTB--SmolLM2-135M/snapshots/abc123") == "HuggingFaceTB/SmolLM2-135M"
    assert hub_cache_id("/c/my_model") is None


def test_model_built_in_python_needs_a_base_name(tmp_path):
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj"], dim=2))
    with pytest.raises(ValueError, match="pass base_model_name_or_path"):
        save_hf_peft(model, str(tmp_path / "hf"))
    assert save_hf_peft(model, str(tmp_path / "hf"), "org/tiny")["base_model_name_or_path"] == "org/tiny"


def test_embedded_gguf_export_records_the_hub_id(tmp_path):
    try:
        gguf_default_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    model, _ = load_pretrained(None)
    assert model.base_model_name_or_path == SMOL
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=2))
    model.save_adapters(str(tmp_path / "adapter"))
    assert save_hf_peft(model, str(tmp_path / "api"))["base_model_name_or_path"] == SMOL
    assert save_hf_peft(model, str(tmp_path / "api2"), "me/my-smol")["base_model_name_or_path"] == "me/my-smol"
    to_hf_peft(None, str(tmp_path / "adapter"), str(tmp_path / "hf"))  # examples/export.py --to-hf-peft
    written = json.loads((tmp_path / "hf" / "adapter_config.json").read_text())
    assert written["base_model_name_or_path"] == SMOL
