"""Record formats (messages, sharegpt, alpaca, auto-detection) and record files (JSONL, JSON
arrays, Parquet), with an error naming file, line or record and the fix for each kind of bad input."""
import json
import sys

import pytest

from nemo_peft.data.formats import MessageReader, detect_format
from nemo_peft.data.record_files import first_record, read_records

USER, BOT = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}


def read(records, fmt="auto", write=None, name="data.jsonl"):
    reader, out = MessageReader(fmt), []
    read_records([write(records, name)], lambda r, where: out.append(reader(r, where)), "test")
    return out


# --- the formats ----------------------------------------------------------------------------------

def test_messages_sharegpt_and_alpaca(write_jsonl):
    system = {"role": "system", "content": "Be kind."}
    assert read([{"messages": [system, USER, BOT], "id": 7}], write=write_jsonl) == [[system, USER, BOT]]
    sharegpt = {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                  {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "Q"},
                                  {"from": "assistant", "value": "A"}]}
    assert read([sharegpt], "sharegpt", write_jsonl) == [[system, USER, BOT, {"role": "user", "content": "Q"},
                                                          {"role": "assistant", "content": "A"}]]
    alpaca = [{"instruction": "Sum", "input": "1 2", "output": "3"}, {"instruction": "Say hi", "input": "",
                                                                      "output": "hi"},
              {"instruction": "Say hi", "output": "hi"}, {"instruction": "Prompt only", "input": None}]
    assert read(alpaca, "alpaca", write_jsonl) == [
        [{"role": "user", "content": "Sum\n\n1 2"}, {"role": "assistant", "content": "3"}],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "Prompt only"}]]


def test_auto_detects_from_keys(write_jsonl):
    assert [detect_format(r) for r in ({"messages": []}, {"conversations": []}, {"instruction": "x"},
                                       {"input": "x", "output": "y"})] == ["messages", "sharegpt", "alpaca", None]
    reader = MessageReader("auto")
    reader({"instruction": "x", "output": "y"}, "f, line 1")
    assert reader.format == "alpaca"


def test_mixed_formats_name_file_and_line(write_jsonl):
    with pytest.raises(ValueError, match=r"data.jsonl, line 3: mixed formats: this record is sharegpt \(it has "
                                         r"'conversations'\), but the first record \(.*data.jsonl, line 1\) is "
                                         "messages"):
        read([{"messages": [USER, BOT]}, {"messages": [USER, BOT]},
              {"conversations": [{"from": "human", "value": "x"}]}], write=write_jsonl)
    with pytest.raises(ValueError, match=r"line 2: mixed formats: this record is not a chat record \(keys \['input'"):
        read([{"messages": [USER, BOT]}, {"input": "a", "output": "b"}], write=write_jsonl)
    with pytest.raises(ValueError, match=r"line 1: format=messages expects a 'messages' field, but the record has keys "
                                         r"\['conversations'\]. It looks like sharegpt data: set format=sharegpt"):
        read([{"conversations": []}], "messages", write_jsonl)
    with pytest.raises(ValueError, match=r"line 1: the record matches no chat format.*format=prompt_template"):
        read([{"input": "a", "output": "b"}], write=write_jsonl)
    with pytest.raises(ValueError, match="format='chat' is not a data format; valid: auto, prompt_template"):
        MessageReader("chat")


@pytest.mark.parametrize("record, fmt, match", [
    ({"messages": [USER, {"role": "bot", "content": "x"}]}, "auto",
     r"line 1, messages\[1\]: unknown role 'bot' in 'role'; valid: system, user, assistant. Rename the role"),
    ({"conversations": [{"from": "model", "value": "x"}]}, "auto",
     r"conversations\[0\]: unknown role 'model' in 'from'; valid: system, human, user, gpt, assistant"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "auto", "unknown role 'tool'.*tool and function turns"),
    ({"messages": [USER, {"role": "assistant", "content": 42}]}, "auto",
     r"line 1, messages\[1\]: field 'content' \(the assistant message's text\) is a JSON number .*not a string"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, "auto", "is a JSON array"),
    ({"conversations": [{"from": "human", "value": None}]}, "auto", "field 'value' .* is a JSON null"),
    ({"messages": []}, "auto", r"line 1: 'messages' is an empty list; a conversation needs messages"),
    ({"messages": "hi"}, "auto", "'messages' must be a JSON array"),
    ({"messages": ["hi"]}, "auto", r"messages\[0\]: expected an object"),
    ({"messages": [{"from": "human", "value": "x"}]}, "auto", r"has no 'role'. .*use format=sharegpt"),
    ({"messages": [{"role": "user"}]}, "auto", r"has no 'content' \(keys present: \['role'\]\)"),
    ({"instruction": 3, "output": "x"}, "alpaca", "field 'instruction' .* is a JSON number"),
    ({"instruction": None, "output": "x"}, "alpaca", "'instruction' is null"),
    ({"instruction": "x", "input": ["a"], "output": "x"}, "alpaca", "field 'input' .* is a JSON array"),
])
def test_bad_records(write_jsonl, record, fmt, match):
    with pytest.raises(ValueError, match=match):
        read([record], fmt, write_jsonl)


# --- files ----------------------------------------------------------------------------------------

def test_json_array_files(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"messages": [USER, BOT]}, {"messages": [USER, BOT]}], indent=2))
    reader = MessageReader()
    assert len(read_records([str(path)], reader, "test")) == 2
    assert first_record(str(path), "test") == ({"messages": [USER, BOT]}, f"{path}, record [0]")
    assert len(read_records([str(path)], reader, "test", max_num_samples=1)) == 1
    path.write_text(json.dumps([{"messages": [USER, BOT]}, {"messages": []}]))
    with pytest.raises(ValueError, match=r"data.json, record \[1\]: 'messages' is an empty list"):
        read_records([str(path)], MessageReader(), "test")
    path.write_text(json.dumps([{"messages": [USER, BOT]}, 3]))
    with pytest.raises(ValueError, match=r"data.json, record \[1\]: expected a JSON object"):
        read_records([str(path)], MessageReader(), "test")
    path.write_text('[\n{"messages": []},\n{"messages": [}\n]')
    with pytest.raises(ValueError, match=r"data.json, line 3 column 15: malformed JSON"):
        read_records([str(path)], MessageReader(), "test")
    path.write_text('[{"messages": [], "messages": []}]')
    with pytest.raises(ValueError, match="repeats the key 'messages'"):
        read_records([str(path)], MessageReader(), "test")


def test_json_file_of_lines_is_read_as_jsonl(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"messages": [USER, BOT]}) + "\n" + '{"messages": [}\n')
    with pytest.raises(ValueError, match=r"data.json, line 2: malformed JSON"):  # jsonl.py's line errors
        read_records([str(path)], MessageReader(), "test")


def test_jsonl_errors_still_name_the_line(write_jsonl):
    with pytest.raises(ValueError, match=r"line 2: malformed JSON"):
        read([{"messages": [USER, BOT]}, "{oops"], write=write_jsonl)


def test_parquet_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    path = str(tmp_path / "data.parquet")
    rows = [{"instruction": "Sum", "input": "1 2", "output": "3"}, {"instruction": "Hi", "input": None, "output": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    reader = MessageReader()
    assert read_records([path], reader, "test") == rows and reader.format == "alpaca"
    chats = [{"messages": [USER, BOT]}, {"messages": [USER, {"role": "robot", "content": "x"}]}]
    pq.write_table(pa.Table.from_pylist(chats), path)
    with pytest.raises(ValueError, match=r"data.parquet, row 1, messages\[1\]: unknown role 'robot'"):
        read_records([path], MessageReader(), "test")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="bad.parquet' as Parquet"):
        read_records([str(tmp_path / "bad.parquet")], MessageReader(), "test")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"needs pyarrow: pip install 'nemo_peft\[parquet\]'.*convert the file"):
        read_records([str(path)], MessageReader(), "test")
