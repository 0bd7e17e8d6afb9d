"""Generation's end-of-turn stop id is read from the chat template, not hard-coded."""
from nemo_peft.data.chat_template import ChatTemplate, end_of_turn_ids
from nemo_peft.data.tokenizer import Tokenizer

LLAMA3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
          "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PLAIN = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def tokenizer_with(*special):
    tok = Tokenizer.byte_level()
    tok.backend.add_special_tokens(list(special))
    return tok


def test_the_token_after_an_assistant_turn_is_the_stop_id():
    tok = tokenizer_with("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>")
    assert end_of_turn_ids(ChatTemplate(LLAMA3, "test"), tok) == [tok.backend.token_to_id("<|eot_id|>")]
    assert end_of_turn_ids(ChatTemplate(CHATML, "test"), tok) == [tok.backend.token_to_id("<|im_end|>")]


def test_no_special_token_after_the_turn_means_no_extra_stop_id():
    tok = tokenizer_with("<|im_end|>")
    assert end_of_turn_ids(ChatTemplate(PLAIN, "test"), tok) == []  # "\n" is text, not an end-of-turn token
    assert end_of_turn_ids(ChatTemplate(CHATML, "test"), Tokenizer.byte_level()) == []  # not special here


def test_a_template_that_requires_a_system_turn_is_probed_with_one():
    strict = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('A system prompt is required') }}{% endif %}" + CHATML
    tok = tokenizer_with("<|im_start|>", "<|im_end|>")
    assert end_of_turn_ids(ChatTemplate(strict, "test"), tok) == [tok.backend.token_to_id("<|im_end|>")]
