import os

import pytest

from nemo_peft.data import SFTDataset

RECORD = {"input": "the input", "output": "the output"}


def masked_ids(item):
    return [t for t, m in zip(item["input_ids"], item["loss_mask"]) if m]


def test_split_moves_trailing_context_whitespace_into_answer(tokenizer, write_jsonl):
    ds = SFTDataset(write_jsonl([RECORD]), tokenizer)
    assert ds.split_record(RECORD) == ("the input", " the output")

    qa = {"question": "what is the capital of France?", "answer": "Paris"}
    ds = SFTDataset(write_jsonl([qa]), tokenizer, prompt_template="Q: {question}\nA: {answer}", label_key="answer")
    assert ds.split_record(qa) == ("Q: what is the capital of France?\nA:", " Paris")


def test_item_context_answer_and_loss_mask(tokenizer, write_jsonl):
    ds = SFTDataset(write_jsonl([RECORD]), tokenizer)
    item = ds[0]
    n_ctx = len(item["context_ids"])
    assert item["context_ids"] == tokenizer.encode("the input")
    assert item["input_ids"][:n_ctx] == item["context_ids"]
    assert item["input_ids"][n_ctx:] == tokenizer.encode(" the output") + [tokenizer.eos_id]
    # the loss mask is 1 exactly on the answer tokens (answer text + EOS), 0 on the context
    assert item["loss_mask"] == [0] * n_ctx + [1] * (len(item["input_ids"]) - n_ctx)
    masked = masked_ids(item)
    assert masked[-1] == tokenizer.eos_id
    assert tokenizer.decode(masked[:-1]) == " the output"
    assert item["answer"] == "the output"
    assert item["metadata"] == RECORD


def test_bos_and_eos_flags(tokenizer, write_jsonl):
    path = write_jsonl([RECORD])
    item = SFTDataset(path, tokenizer, add_bos=True, add_eos=False)[0]
    assert item["context_ids"][0] == tokenizer.bos_id
    assert item["context_ids"][1:] == tokenizer.encode("the input")
    assert tokenizer.eos_id not in item["input_ids"]
    assert tokenizer.decode(masked_ids(item)) == " the output"


def test_template_with_text_after_label_goes_into_answer(tokenizer, write_jsonl):
    ds = SFTDataset(write_jsonl([RECORD]), tokenizer, prompt_template="In: {input}\nOut: {output}.")
    assert ds.split_record(RECORD) == ("In: the input\nOut:", " the output.")


@pytest.mark.parametrize("template", ["{output} {input}", "{input}", "{input} {output} {output}"])
def test_label_placeholder_must_be_last(tokenizer, write_jsonl, template):
    with pytest.raises(ValueError, match=r"\{output\}"):
        SFTDataset(write_jsonl([RECORD]), tokenizer, prompt_template=template)


def test_truncation_field_is_cut_and_answer_kept(tokenizer, write_jsonl):
    long_input = " ".join(["a long long long input with many many words to truncate"] * 20)
    record = {"input": long_input, "question": "what is the weather", "output": "the sun and the rain"}
    template = "Context: {input}\nQuestion: {question}\nAnswer: {output}"
    full = SFTDataset(write_jsonl([record]), tokenizer, prompt_template=template, max_seq_length=10_000)[0]
    ds = SFTDataset(write_jsonl([record]), tokenizer, prompt_template=template, max_seq_length=40, add_bos=True)
    item = ds[0]
    assert len(full["input_ids"]) > 40
    assert len(item["input_ids"]) <= 40
    answer_ids = tokenizer.encode(" the sun and the rain") + [tokenizer.eos_id]
    assert item["input_ids"][-len(answer_ids):] == answer_ids
    assert masked_ids(item) == answer_ids
    # the field was shortened from its end; the template text around it survives
    assert item["context_ids"][0] == tokenizer.bos_id
    context = tokenizer.decode(item["context_ids"])
    assert context.startswith("Context: a long long long input")
    assert context.endswith("\nQuestion: what is the weather\nAnswer:")
    assert len(context) < len(long_input)


def test_left_truncation_when_field_not_in_template(tokenizer, write_jsonl):
    record = {"text": " ".join(["many words"] * 50), "output": "the output"}
    path = write_jsonl([record])
    full = SFTDataset(path, tokenizer, prompt_template="{text} {output}", add_bos=True)[0]
    item = SFTDataset(path, tokenizer, prompt_template="{text} {output}", add_bos=True, max_seq_length=12)[0]
    assert len(item["input_ids"]) == 12
    answer_ids = tokenizer.encode(" the output") + [tokenizer.eos_id]
    assert masked_ids(item) == answer_ids
    n_keep = 12 - len(answer_ids) - 1
    # BOS kept, then the END of the context (the left side is dropped)
    assert item["context_ids"] == [tokenizer.bos_id] + full["context_ids"][-n_keep:]


def test_answer_longer_than_max_seq_length_is_cut_keeping_eos(tokenizer, write_jsonl):
    record = {"input": "the input", "output": " ".join(["the sun and the rain"] * 20)}
    item = SFTDataset(write_jsonl([record]), tokenizer, max_seq_length=16)[0]
    assert len(item["input_ids"]) == 16
    assert item["input_ids"][-1] == tokenizer.eos_id
    assert len(item["context_ids"]) == 1  # one context token still predicts the first answer token
    assert masked_ids(item)[:-1] == tokenizer.encode(" " + record["output"])[:14]


def test_multiple_files_blank_lines_and_max_num_samples(tokenizer, write_jsonl):
    a = write_jsonl([RECORD, "", "   ", {"input": "x", "output": "y"}], name="a.jsonl")
    b = write_jsonl([{"input": "b", "output": "c"}], name="b.jsonl")
    ds = SFTDataset([a, b], tokenizer)
    assert len(ds) == 3
    assert [ds[i]["answer"] for i in range(3)] == ["the output", "y", "c"]
    assert len(SFTDataset([a, b], tokenizer, max_num_samples=2)) == 2


# --- errors name the problem and the fix -------------------------------------------------------


def test_missing_file(tokenizer, tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        SFTDataset(missing, tokenizer)


def test_malformed_json_names_file_and_line(tokenizer, write_jsonl):
    path = write_jsonl([RECORD, '{"input": "x", "output": '])
    with pytest.raises(ValueError) as err:
        SFTDataset(path, tokenizer)
    msg = str(err.value)
    assert path in msg and "line 2" in msg and "malformed JSON" in msg


def test_line_that_is_not_an_object(tokenizer, write_jsonl):
    path = write_jsonl([RECORD, RECORD, "[1, 2]"])
    with pytest.raises(ValueError) as err:
        SFTDataset(path, tokenizer)
    msg = str(err.value)
    assert path in msg and "line 3" in msg and "list" in msg


def test_missing_label_key(tokenizer, write_jsonl):
    path = write_jsonl([{"input": "x", "answer": "y"}])
    with pytest.raises(ValueError) as err:
        SFTDataset(path, tokenizer)
    msg = str(err.value)
    assert path in msg and "line 1" in msg and "'output'" in msg and "'answer'" in msg and "label_key" in msg


def test_missing_template_field(tokenizer, write_jsonl):
    path = write_jsonl([RECORD, {"question": "q", "output": "y"}])
    with pytest.raises(ValueError) as err:
        SFTDataset(path, tokenizer)
    msg = str(err.value)
    assert path in msg and "line 2" in msg and "'input'" in msg and "prompt_template" in msg


def test_empty_dataset(tokenizer, write_jsonl):
    path = write_jsonl(["", "  "])
    with pytest.raises(ValueError) as err:
        SFTDataset(path, tokenizer)
    assert os.path.basename(path) in str(err.value) and "No records" in str(err.value)
