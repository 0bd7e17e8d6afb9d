"""Reading JSONL record files with errors that name the file and line (shared by the datasets)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable


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
