"""Chat templates: where the tokenizer's comes from, rendering equal to transformers'
apply_chat_template, and the errors for bad or missing templates."""
import json
import logging
import pickle

import pytest

from nemo_peft.convert.hf_dir import load_tokenizer
from nemo_peft.data.chat_template import ChatTemplate, resolve_chat_template, special_tokens_of
from nemo_peft.data.tokenizer import Tokenizer
from tests.data.chat_refs import (CHATML_TEMPLATE, CONVERSATIONS, LLAMA3_SPECIALS, LLAMA3_TEMPLATE, smollm2,
                                  transformers_render, with_specials)


def _tokenizers():
    base = smollm2()
    return {
        "smollm2": base,  # its own template, from the GGUF metadata
        "llama3": with_specials(base, LLAMA3_SPECIALS, LLAMA3_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>"),
        "chatml": with_specials(base, [], CHATML_TEMPLATE),
    }


@pytest.fixture(scope="module")
def tokenizers():
    return _tokenizers()


# --- where templates come from ------------------------------------------------------------------

def test_gguf_tokenizer_carries_its_chat_template():
    tok = smollm2()
    assert tok.chat_template.startswith("{% for message in messages %}")
    assert "<|im_start|>" in tok.chat_template and "You are a helpful AI assistant named SmolLM" in tok.chat_template
    assert tok.chat_template_source.startswith("GGUF metadata 'tokenizer.chat_template' of ")
    assert tok.chat_template_source.endswith(".gguf")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_native_directory_round_trips_the_template(tmp_path, tokenizer):
    tok = Tokenizer(tokenizer.backend, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                    chat_template="{{ messages[0]['content'] }}\r\n{{ eos_token }}")
    tok.save(str(tmp_path))
    back = Tokenizer.from_dir(str(tmp_path))
    assert back.chat_template == tok.chat_template  # byte for byte, \r\n kept
    assert back.chat_template_source == str(tmp_path / "chat_template.jinja")
    tokenizer.save(str(tmp_path))  # a tokenizer without a template removes the stale file
    assert not (tmp_path / "chat_template.jinja").exists() and Tokenizer.from_dir(str(tmp_path)).chat_template is None


def _hf_dir(path, tokenizer, config=None, jinja=None):
    tokenizer.backend.save(str(path / "tokenizer.json"))
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    if jinja is not None:
        (path / "chat_template.jinja").write_text(jinja)
    return str(path)


def test_hf_directory_templates(tmp_path, tokenizer, caplog):
    for name, config, jinja, expected in [
        ("string", {"chat_template": "A"}, None, "A"),
        ("named", {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]},
         None, "D"),
        ("jinja_file_wins", {"chat_template": "A"}, "J", "J"),
        ("none", {"bos_token": "<s>"}, None, None),
    ]:
        (tmp_path / name).mkdir()
        tok = load_tokenizer(_hf_dir(tmp_path / name, tokenizer, config, jinja))
        assert tok.chat_template == expected, name
    assert "tokenizer_config.json 'chat_template'" in load_tokenizer(str(tmp_path / "string")).chat_template_source
    (tmp_path / "no_default").mkdir()
    with caplog.at_level(logging.WARNING):
        tok = load_tokenizer(_hf_dir(tmp_path / "no_default", tokenizer,
                                     {"chat_template": [{"name": "tool_use", "template": "T"}]}))
    assert tok.chat_template is None and "none named 'default'" in caplog.text


# --- rendering equals transformers' -------------------------------------------------------------

@pytest.mark.parametrize("name", ["smollm2", "llama3", "chatml"])
def test_rendering_equals_transformers(tokenizers, name):
    tok = tokenizers[name]
    template = ChatTemplate(tok.chat_template, name)
    for conversation in CONVERSATIONS.values():
        for generation_prompt in (False, True):
            ours = template.render(conversation, generation_prompt, special_tokens_of(tok))
            assert ours == transformers_render(tok, tok.chat_template, conversation, generation_prompt)
    with_system = template.render(CONVERSATIONS["system"], True, special_tokens_of(tok))
    assert "You answer in one word." in with_system and with_system.endswith("assistant" + (
        "<|end_header_id|>\n\n" if name == "llama3" else "\n"))


def test_template_features_transformers_provides():
    source = ("{% for m in messages %}{% if m.tool_calls %}never{% endif %}{% generation %}{{ m | tojson }}"
              "{% endgeneration %}{% if loop.index > 1 %}{% break %}{% endif %}{% endfor %}"
              "{% if date_string is not defined %}{{ strftime_now('%Y')|length }}{% endif %}{{ tools }}")
    out = ChatTemplate(source, "test").render([{"role": "user", "content": "<a&b>"}, {"role": "x", "content": ""}] * 2)
    assert out == '{"role": "user", "content": "<a&b>"}{"role": "x", "content": ""}4None'  # tojson keeps <, &
    template = pickle.loads(pickle.dumps(ChatTemplate("{{ messages|length }}", "test")))  # for loader workers
    assert template.render([{}]) == "1"


# --- errors -------------------------------------------------------------------------------------

def test_syntax_error_names_the_template_and_line():
    with pytest.raises(ValueError, match=r"from my.jinja is not valid Jinja: .*\(template line 2: '\{\{ x \}'\)"):
        ChatTemplate("{% for m in messages %}\n{{ x }\n{% endfor %}", "my.jinja")
    with pytest.raises(ValueError, match="is empty"):
        ChatTemplate("  ", "the config")


def test_undefined_variable_is_an_error_naming_it():
    template = ChatTemplate("{{ messages[0].content }}\n{{ today }}", "a.jinja")
    with pytest.raises(ValueError, match=r"from a.jinja uses the variable 'today' \(template line 2\), which is not "
                                         r"defined.*`\{% if today is defined %\}`"):
        template.render([{"content": "x"}])
    template = ChatTemplate("{{ bos_token }}{{ messages[0].content }}", "b.jinja")
    with pytest.raises(ValueError, match="'bos_token'.*the tokenizer has no such token"):
        template.render([{"content": "x"}], special_tokens={"bos_token": None})
    assert template.render([{"content": "x"}], special_tokens={"bos_token": "<s>"}) == "<s>x"


def test_template_exceptions_are_reported():
    template = ChatTemplate("{% if messages[0].role != 'user' %}\n{{ raise_exception('Roles must alternate') }}"
                            "{% endif %}", "c.jinja")
    with pytest.raises(ValueError, match=r"from c.jinja rejected the conversation \(template line 2\): Roles must "
                                         "alternate"):
        template.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="rejected the conversation.*unsafe"):  # the sandbox holds
        ChatTemplate("{{ messages.append(1) }}", "d").render([])


def test_resolving_the_template(tmp_path, tokenizer):
    tok = Tokenizer(tokenizer.backend, chat_template="{{ 'model' }}", chat_template_source="model dir")
    assert resolve_chat_template(tok).origin == "model dir"
    assert resolve_chat_template(tok, chat_template="{{ 'cfg' }}").render([]) == "cfg"
    path = tmp_path / "t.jinja"
    path.write_text("{{ 'file' }")
    with pytest.raises(ValueError, match=f"from {path} is not valid Jinja"):
        resolve_chat_template(tok, chat_template_file=str(path))
    with pytest.raises(FileNotFoundError, match="chat_template_file .* does not exist"):
        resolve_chat_template(tok, chat_template_file=str(tmp_path / "missing.jinja"))
    with pytest.raises(ValueError, match="Both chat_template and chat_template_file"):
        resolve_chat_template(tok, chat_template="x", chat_template_file=str(path))
    with pytest.raises(ValueError, match=r"needs a chat template, but the model's tokenizer has none.*chat_template to "
                                         r"a Jinja template string.*chat_template_file.*chat_template\.jinja"):
        resolve_chat_template(tokenizer)
