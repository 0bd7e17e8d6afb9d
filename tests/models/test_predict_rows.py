"""Prediction rows: prompt-only data (no answers) gives rows without a label, the prompt keeps its special
tokens, and generate.py scores exact match only over rows with a non-empty label."""
import torch

from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.recipes.generate import exact_match_summary
from tests.helpers import make_model


def module():
    tok = Tokenizer.byte_level()
    return GPTSFTModel(make_model("llama", vocab_size=tok.vocab_size), tok, generation={"max_new_tokens": 3})


def prompt_batch(**extra):
    enc = Tokenizer.byte_level().encode
    ctx = torch.tensor([[258, 256, *enc("Hi")], [256, *enc("Ok?")]])  # <pad> <s> H i | <s> O k ?
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    return {"context_ids": ctx, "context_mask": mask, **extra}


def test_prompt_only_rows_have_no_label_and_keep_special_tokens():
    m = module()
    for batch in (prompt_batch(), prompt_batch(answers=[None, None])):
        rows = m.predict_step(batch, 0)
        assert [r["input"] for r in rows] == ["<s>Hi", "<s>Ok?"]
        assert all(set(r) == {"input", "prediction"} for r in rows)
    rows = m.predict_step(prompt_batch(answers=["yes", None]), 0)
    assert rows[0]["label"] == "yes" and "label" not in rows[1]


def test_data_parallel_padding_copies_are_not_predicted_twice():
    rows = module().predict_step(prompt_batch(answers=["a", "b"], duplicate=torch.tensor([False, True])), 0)
    assert [r["label"] for r in rows] == ["a"]


def test_exact_match_only_over_rows_with_a_label():
    assert exact_match_summary([{"prediction": "x"}, {"prediction": "y", "label": None}]) is None
    assert exact_match_summary([{"prediction": "x", "label": ""}, {"prediction": "", "label": "  "}]) is None
    rows = [{"prediction": "a", "label": "a "}, {"prediction": "b", "label": "c"}, {"prediction": "d"},
            {"prediction": "e", "label": ""}]
    assert exact_match_summary(rows) == "exact match: 50.0% on 2 examples of 4 (only rows with a label are scored)"
    assert exact_match_summary(rows[:2]) == "exact match: 50.0% on 2 examples"
