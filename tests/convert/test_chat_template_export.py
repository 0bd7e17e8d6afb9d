"""The chat template travels: HF exports (save_hf, examples/merge.py) write chat_template.jinja and
tokenizer_config.json's "chat_template", so transformers' apply_chat_template works offline on them;
native directories keep it too."""
import json

import pytest
import torch

from nemo_peft import load_pretrained, save_hf, save_model
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.t5 import T5Config, T5Model
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.recipes.merge import merge_to_checkpoint
from tests.helpers import make_model

transformers = pytest.importorskip("transformers")

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
RENDERED = "<|system|>Be brief.</s>\n<|user|>Hi</s>\n<|assistant|>"


def chat_tokenizer(template=TEMPLATE) -> Tokenizer:
    tok = Tokenizer.byte_level()
    tok.chat_template = template
    return tok


def hf_chat(directory) -> str:
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_hf_export_carries_the_template(tmp_path, arch):
    tok = chat_tokenizer()
    model = make_model("llama", vocab_size=tok.vocab_size) if arch == "llama" else T5Model(
        T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2,
                 pad_token_id=258, eos_token_id=257, decoder_start_token_id=258))
    save_hf(model, str(tmp_path), tok)
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == TEMPLATE
    assert hf_chat(tmp_path) == RENDERED
    assert load_pretrained(str(tmp_path))[1].chat_template == TEMPLATE  # and it comes back in
    # re-exporting a tokenizer without one into the same directory leaves no stale template behind
    save_hf(model, str(tmp_path), Tokenizer.byte_level())
    assert not (tmp_path / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((tmp_path / "tokenizer_config.json").read_text())


def test_merge_keeps_the_base_template_in_hf_and_native_outputs(tmp_path):
    tok = chat_tokenizer()
    model = make_model("llama", vocab_size=tok.vocab_size)
    save_hf(model, str(tmp_path / "base"), tok)
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj"], dim=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    model.save_adapters(str(tmp_path / "adapter"))
    merge_to_checkpoint(str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "merged"))
    assert hf_chat(tmp_path / "merged") == RENDERED
    merge_to_checkpoint(str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "native"), fmt="native")
    assert load_pretrained(str(tmp_path / "native"))[1].chat_template == TEMPLATE


def test_native_save_carries_the_template(tmp_path):
    save_model(make_model("llama", vocab_size=259), str(tmp_path), chat_tokenizer())
    assert (tmp_path / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE
    assert load_pretrained(str(tmp_path))[1].chat_template == TEMPLATE
