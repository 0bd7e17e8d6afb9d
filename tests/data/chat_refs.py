"""Shared by the chat tests: the real SmolLM2 tokenizer (read from the embedded GGUF once per test
session: reading its metadata takes ~10 s), reference templates written out here, conversations,
and transformers' rendering as the independent reference."""
import functools

import pytest
from tokenizers import AddedToken
from tokenizers import Tokenizer as HFBackend

from nemo_peft.data.tokenizer import Tokenizer

# Llama-3's template (Meta-Llama-3-8B-Instruct's tokenizer_config.json)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# plain ChatML, written with whitespace control and line breaks as Hub templates often are
CHATML_TEMPLATE = """{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

SYSTEM = {"role": "system", "content": "You answer in one word."}
TURNS = [
    {"role": "user", "content": "What colour is the sky?"},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "And grass? Café, naïve, 日本語 😀"},
    {"role": "assistant", "content": "Green, usually\nin spring."},
]
CONVERSATIONS = {
    "single": TURNS[:2],
    "multi": TURNS,
    "system": [SYSTEM, *TURNS],
    "open": TURNS[:3],  # ends with a user turn: a prompt
}


@functools.lru_cache(maxsize=1)
def smollm2() -> Tokenizer:
    from nemo_peft.convert.gguf import gguf_default_path, load_gguf_tokenizer
    try:
        path = gguf_default_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return load_gguf_tokenizer(path)


def with_specials(tok: Tokenizer, specials: list[str], template: str, bos: str | None = None,
                  eos: str | None = None) -> Tokenizer:
    """A copy of ``tok`` with extra special tokens and another chat template."""
    backend = HFBackend.from_str(tok.backend.to_str())
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    ids = {name: backend.token_to_id(t) if t else getattr(tok, f"{name}_id") for name, t in (("bos", bos), ("eos", eos))}
    return Tokenizer(backend, ids["bos"], ids["eos"], tok.pad_id, chat_template=template, chat_template_source="test")


_HF = {}


def transformers_render(tok: Tokenizer, template: str, messages, add_generation_prompt: bool) -> str:
    """transformers' apply_chat_template(tokenize=False) for our tokenizer's backend (no hub access)."""
    from transformers import PreTrainedTokenizerFast
    if id(tok) not in _HF:
        special = {k: v for k, v in (("bos_token", tok.bos_token), ("eos_token", tok.eos_token),
                                     ("pad_token", tok.pad_token)) if v is not None}
        _HF[id(tok)] = (tok, PreTrainedTokenizerFast(tokenizer_object=HFBackend.from_str(tok.backend.to_str()),
                                                     **special))
    hf = _HF[id(tok)][1]
    return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                  chat_template=template)
