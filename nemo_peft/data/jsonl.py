"""What the JSONL datasets share: reading record files with errors that name the file and line,
the checks of their common arguments, and the dataset base class."""
from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable

from torch.utils.data import Dataset


class JsonlDataset(Dataset):
    """Records read (and checked) when the dataset is built, so bad data fails before training,
    and tokenized per item: a subclass sets ``records`` and gives ``tokenize_record(record)``
    and ``make_item(record, *token_ids)``."""

    records: list[dict]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx: int) -> dict:
        record = self.records[idx]
        return self.make_item(record, *self.tokenize_record(record))


def file_name_list(file_names: list[str] | str | os.PathLike) -> list[str]:
    """One path or several, as a non-empty list of str."""
    if isinstance(file_names, (str, os.PathLike)):
        file_names = [file_names]
    file_names = [os.fspath(f) for f in file_names]
    if not file_names:
        raise ValueError("file_names is empty: give at least one JSONL file of training records.")
    return file_names


def check_max_num_samples(max_num_samples: int | None) -> None:
    if max_num_samples is not None and max_num_samples <= 0:
        raise ValueError(f"max_num_samples={max_num_samples} must be a positive number or None (use all).")


def check_special_token(tokenizer, name: str, add: bool) -> None:
    """``add_<name>=True`` needs the tokenizer's ``<name>_id`` ("bos", "eos")."""
    if add and getattr(tokenizer, f"{name}_id") is None:
        raise ValueError(f"add_{name}=True but the tokenizer has no {name}_id: set add_{name}=False or give the "
                         "tokenizer one.")


def read_jsonl_records(file_names: list[str], check: Callable[[dict, str], None], kind: str,
                       max_num_samples: int | None = None) -> list[dict]:
    """Every JSON object of ``file_names`` in order (blank lines skipped), at most ``max_num_samples``.

    Files are UTF-8 (a leading BOM is dropped). ``check(record, where)`` raises for a record that
    lacks what the dataset needs; ``where`` is "path, line N" for its message. ``kind`` names the
    data in errors ("SFT", "Seq2seq")."""
    records: list[dict] = []
    for path in file_names:
        _check_is_file(path, kind)
        with open(path, "rb") as f:  # bytes, so a bad encoding is reported with its line
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}, line {lineno}"
                if lineno == 1:
                    raw = raw.removeprefix(codecs.BOM_UTF8)  # editors on Windows write one ("utf-8-sig")
                line = _decode(raw, where)
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) are harmless
                records.append(_parse_line(line, where, check))
                if max_num_samples is not None and len(records) >= max_num_samples:
                    return records
    if not records:
        raise ValueError(f"No records in {file_names}: the files are empty or only blank lines. "
                         "Point file_names at JSONL files with one JSON object per line.")
    return records


def check_text_fields(record: dict, where: str, fields: dict[str, str]) -> None:
    """Each field used as text must be a JSON string: a number, list, null or object would be
    trained on as Python's rendering of it (" None", " ['a', 'b']"). ``fields``: key -> the option
    or template that uses it, for the message."""
    for key, used_by in fields.items():
        value = record[key]
        if not isinstance(value, str):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ValueError(f"{where}: field {key!r} ({used_by}) is a JSON {_json_type(value)} "
                             f"({type(value).__name__}: {shown}), not a string. Every field the data uses must "
                             "be a JSON string: quote numbers (\"42\", not 42) and write text for null, "
                             "arrays and objects.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # json accepts a lone "\ud800" escape; tokenizers do not
            raise ValueError(f"{where}: field {key!r} ({used_by}) holds an unpaired surrogate "
                             f"\\u{ord(value[e.start]):04x} at character {e.start}, which is not text; fix the "
                             "escape in the data.") from None


def _json_type(value) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_is_file(path: str, kind: str) -> None:
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith(".jsonl"))[:3]
        hint = f" (it holds {inside})" if inside else ""
        raise IsADirectoryError(f"{kind} data file {path!r} is a directory{hint}; file_names takes JSONL files: "
                                "list the .jsonl files themselves, e.g. [dir/train.jsonl].")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} data file not found: {path!r}. Check file_names "
                                "(paths are relative to the working directory).")


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line: "
                         f"{e.reason}). Save the file as UTF-8.") from None


def _no_duplicate_keys(pairs: list[tuple]) -> dict:
    """json's default keeps the last of repeated keys silently; a repeated field is a data error."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


class _DuplicateKey(Exception):
    pass


def _parse_line(line: str, where: str, check: Callable[[dict, str], None]) -> dict:
    try:
        record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON ({e}). Each line must be one JSON object such as "
                         "{\"input\": \"...\", \"output\": \"...\"}; fix or remove the line.") from None
    except _DuplicateKey as e:
        raise ValueError(f"{where}: key {e.args[0]!r} appears more than once in the record; JSON readers "
                         "would keep only the last value. Keep one.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object per line, got {type(record).__name__}. "
                         "Write each record as {\"field\": value, ...}.")
    check(record, where)
    return record
