"""Bad data fails where it enters, with the file, the line, the key and what is wrong."""
import json

import pytest

from nemo_peft.data import Seq2SeqDataset, SFTDataset

GOOD = {"input": "the input", "output": "the output"}


def write_bytes(tmp_path, data: bytes, name="data.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("value,json_type,py_type", [
    (42, "number", "int"), (1.5, "number", "float"), (None, "null", "NoneType"), (True, "boolean", "bool"),
    (["a", "b"], "array", "list"), ({"text": "x"}, "object", "dict"),
])
@pytest.mark.parametrize("key,used_by", [("output", "label_key"), ("input", "prompt_template")])
def test_sft_non_string_field(tokenizer, write_jsonl, value, json_type, py_type, key, used_by):
    path = write_jsonl([GOOD, GOOD, {**GOOD, key: value}])
    with pytest.raises(ValueError) as err:
        SFTDataset(path, tokenizer)
    msg = str(err.value)
    assert msg.startswith(f"{path}, line 3: field {key!r} ({used_by}) is a JSON {json_type} ({py_type}: {value!r})")
    assert "not a string" in msg


@pytest.mark.parametrize("key,used_by", [("input", "context_key"), ("output", "label_key")])
def test_seq2seq_non_string_field(tokenizer, write_jsonl, key, used_by):
    path = write_jsonl([GOOD, {**GOOD, key: None}])
    with pytest.raises(ValueError) as err:
        Seq2SeqDataset(path, tokenizer)
    assert str(err.value).startswith(f"{path}, line 2: field {key!r} ({used_by}) is a JSON null (NoneType: None)")


def test_fields_the_template_does_not_use_may_be_anything(tokenizer, write_jsonl):
    ds = SFTDataset(write_jsonl([{**GOOD, "id": 7, "tags": ["a"]}]), tokenizer)
    assert ds[0]["metadata"]["id"] == 7


def test_template_format_spec_that_cannot_format_text_fails_at_build_time(tokenizer, write_jsonl):
    with pytest.raises(ValueError, match=r"\{input\}.*record fields are strings"):
        SFTDataset(write_jsonl([GOOD]), tokenizer, prompt_template="{input:05d} {output}")
    assert SFTDataset(write_jsonl([GOOD]), tokenizer, prompt_template="{input:>12} {output}")[0]


@pytest.mark.parametrize("dataset", [SFTDataset, Seq2SeqDataset])
def test_non_utf8_names_file_line_and_byte(tokenizer, tmp_path, dataset):
    path = write_bytes(tmp_path, json.dumps(GOOD).encode() + b'\n{"input": "caf\xe9", "output": "x"}\n')
    with pytest.raises(ValueError) as err:
        dataset(path, tokenizer)
    msg = str(err.value)
    assert msg.startswith(f"{path}, line 2: not UTF-8 text (byte 0xe9 at byte 15 of the line")
    assert "Save the file as UTF-8" in msg


@pytest.mark.parametrize("dataset", [SFTDataset, Seq2SeqDataset])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_utf8_bom_at_start_is_accepted(tokenizer, tmp_path, dataset, newline):
    lines = [json.dumps(GOOD, ensure_ascii=False).encode(), json.dumps({"input": "é", "output": "ü"}).encode()]
    path = write_bytes(tmp_path, b"\xef\xbb\xbf" + newline.join(lines) + newline)
    ds = dataset(path, tokenizer)
    assert ds.records == [GOOD, {"input": "é", "output": "ü"}]


def test_bom_in_the_middle_of_a_file_names_the_line(tokenizer, tmp_path):
    path = write_bytes(tmp_path, (json.dumps(GOOD) + "\n\ufeff" + json.dumps(GOOD) + "\n").encode())
    with pytest.raises(ValueError, match=r", line 2: malformed JSON .*BOM"):
        SFTDataset(path, tokenizer)


@pytest.mark.parametrize("dataset", [SFTDataset, Seq2SeqDataset])
def test_broken_json_names_file_and_line(tokenizer, write_jsonl, dataset):
    path = write_jsonl([GOOD, "", '{"input": "x" "output": "y"}'])
    with pytest.raises(ValueError) as err:
        dataset(path, tokenizer)
    assert str(err.value).startswith(f"{path}, line 3: malformed JSON (Expecting ',' delimiter")


def test_duplicate_key_is_an_error(tokenizer, write_jsonl):
    path = write_jsonl([GOOD, '{"input": "x", "output": "first", "output": "second"}'])
    with pytest.raises(ValueError) as err:
        SFTDataset(path, tokenizer)
    assert str(err.value).startswith(f"{path}, line 2: key 'output' appears more than once")


def test_lone_surrogate_escape_is_an_error(tokenizer, write_jsonl):
    path = write_jsonl(['{"input": "a\\ud800b", "output": "y"}'])
    with pytest.raises(ValueError) as err:
        Seq2SeqDataset(path, tokenizer)
    assert str(err.value).startswith(f"{path}, line 1: field 'input' (context_key) holds an unpaired surrogate \\ud800")


@pytest.mark.parametrize("dataset,kind", [(SFTDataset, "SFT"), (Seq2SeqDataset, "Seq2seq")])
def test_a_directory_says_so_and_what_to_pass(tokenizer, tmp_path, dataset, kind):
    (tmp_path / "train.jsonl").write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(IsADirectoryError) as err:
        dataset(str(tmp_path), tokenizer)
    msg = str(err.value)
    assert msg.startswith(f"{kind} data file {str(tmp_path)!r} is a directory (it holds ['train.jsonl'])")
    assert "list the .jsonl files themselves" in msg
    with pytest.raises(FileNotFoundError, match="not found"):
        dataset(str(tmp_path / "missing.jsonl"), tokenizer)
