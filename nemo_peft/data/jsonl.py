"""What the JSONL datasets share: reading record files with errors that name the file and line,
the checks of their common arguments, and the dataset base class."""
from __future__ import annotations

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

    ``check(record, where)`` raises for a record that lacks what the dataset needs; ``where``
    is "path, line N" for its message. ``kind`` names the data in errors ("SFT", "Seq2seq")."""
    records: list[dict] = []
    for path in file_names:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{kind} data file not found: {path!r}. Check file_names "
                                    "(paths are relative to the working directory).")
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) are harmless
                records.append(_parse_line(line, f"{path}, line {lineno}", check))
                if max_num_samples is not None and len(records) >= max_num_samples:
                    return records
    if not records:
        raise ValueError(f"No records in {file_names}: the files are empty or only blank lines. "
                         "Point file_names at JSONL files with one JSON object per line.")
    return records


def _parse_line(line: str, where: str, check: Callable[[dict, str], None]) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON ({e}). Each line must be one JSON object such as "
                         "{\"input\": \"...\", \"output\": \"...\"}; fix or remove the line.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object per line, got {type(record).__name__}. "
                         "Write each record as {\"field\": value, ...}.")
    check(record, where)
    return record
