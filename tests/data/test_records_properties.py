"""Property tests of JSONL record parsing (nemo_peft/data/jsonl.py) through both datasets: any string
values come back as exactly the prompt and label the datasets build; any non-string value in a
used field is the clear error naming file, line, key and type."""
from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_peft.data import Seq2SeqDataset, SFTDataset

SETTINGS = settings(max_examples=25, deadline=None, database=None)
TEXT = st.text(max_size=30)  # any unicode but lone surrogates (not text; see test_bad_records.py)
# every JSON value that is not a string
NON_STRING = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                          max_leaves=5)
JSON_TYPE = {type(None): "null", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def write(tmp, lines: list, bom: bool = False, newline: str = "\n", ascii_only: bool = True) -> str:
    """A JSONL file of ``lines`` (dicts are dumped) in a fresh dir of ``tmp`` (tmp_path_factory); its path."""
    path = os.path.join(tmp.mktemp("records"), "data.jsonl")
    text = newline.join(json.dumps(x, ensure_ascii=ascii_only) if isinstance(x, dict) else x for x in lines)
    with open(path, "wb") as f:
        f.write((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8") + newline.encode())
    return path


def esc(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


@SETTINGS
@given(TEXT, TEXT, TEXT, TEXT, TEXT, st.booleans(), st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_sft_string_values_become_exactly_the_prompt_and_label(tokenizer, tmp_path_factory, pre, question, mid,
                                                               answer, post, bom, newline, ascii_only):
    record = {"question": question, "answer": answer}
    path = write(tmp_path_factory, [record], bom, newline, ascii_only)
    ds = SFTDataset(path, tokenizer, prompt_template=f"{esc(pre)}{{question}}{esc(mid)}{{answer}}{esc(post)}",
                    label_key="answer", max_seq_length=10_000)
    assert ds.records == [record]
    context, target = ds.split_record(record)
    full = pre + question + mid + answer + post
    assert context + target == full and context == (pre + question + mid).rstrip()
    item = ds[0]
    assert item["answer"] == answer.strip() and item["metadata"] == record
    # byte-level BPE: decode is exact; last is EOS. Text that spells a special token ("<pad>") becomes it, as in
    # HF tokenizers, so decode keeps special tokens
    assert tokenizer.decode(item["input_ids"][:-1], skip_special_tokens=False) == full


@SETTINGS
@given(TEXT, TEXT, st.booleans())
def test_seq2seq_string_values_become_exactly_the_encoder_and_decoder_text(tokenizer, tmp_path_factory, context,
                                                                           label, bom):
    record = {"input": context, "output": label}
    ds = Seq2SeqDataset(write(tmp_path_factory, [record], bom), tokenizer, max_seq_length=10_000)
    item = ds[0]
    text = lambda ids: tokenizer.decode(ids[:-1], skip_special_tokens=False)  # noqa: E731 (see the test above)
    assert text(item["input_ids"]) == context and text(item["label_ids"]) == label
    assert item["answer"] == label.strip() and item["metadata"] == record


@pytest.mark.parametrize("dataset", ["sft", "seq2seq"])
@SETTINGS
@given(value=NON_STRING, key=st.sampled_from(["input", "output"]), good_lines=st.integers(0, 3))
def test_a_non_string_field_is_an_error_naming_file_line_key_and_type(tokenizer, tmp_path_factory, dataset, value,
                                                                      key, good_lines):
    record = {"input": "x", "output": "y", key: value}
    path = write(tmp_path_factory, [{"input": "a", "output": "b"}] * good_lines + [record])
    with pytest.raises(ValueError) as err:
        (SFTDataset if dataset == "sft" else Seq2SeqDataset)(path, tokenizer)
    msg = str(err.value)
    assert f"{path}, line {good_lines + 1}:" in msg
    assert f"field {key!r}" in msg and f"JSON {JSON_TYPE[type(value)]} ({type(value).__name__}" in msg
    assert "not a string" in msg
