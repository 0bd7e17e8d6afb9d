"""Record files of any supported kind: JSON Lines (``jsonl.py``), a JSON array of records (a
.json file starting with "["; a .json file of one object per line is read as JSON Lines) and
Parquet (with pyarrow, the optional ``parquet`` extra). Every error names the file and the line,
record index or row, as ``read_jsonl_records`` does."""
from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator

from nemo_peft.data.jsonl import _check_is_file, _DuplicateKey, _no_duplicate_keys, read_jsonl_records

Check = Callable[[dict, str], None]


def read_records(file_names: list[str], check: Check, kind: str, max_num_samples: int | None = None) -> list[dict]:
    """Every record of ``file_names`` in order, at most ``max_num_samples``; ``check(record, where)``
    raises for a bad record (``where`` is "path, line N", "path, record [i]" or "path, row i")."""
    records: list[dict] = []
    for path in file_names:
        _check_is_file(path, kind)
        left = None if max_num_samples is None else max_num_samples - len(records)
        records += read_jsonl_records([path], check, kind, left) if _kind(path) == "jsonl" else \
            _take(_iter_records(path, check), left)
        if max_num_samples is not None and len(records) >= max_num_samples:
            break
    if not records:
        raise ValueError(f"No records in {file_names}: the files hold no records. Point file_names at JSONL, "
                         "JSON or Parquet files of records.")
    return records


def first_record(path: str, kind: str) -> tuple[dict, str]:
    """(the first record of ``path``, where it is), for detecting a file's format."""
    _check_is_file(path, kind)
    found = []
    note = lambda record, where: found.append(where)  # noqa: E731
    records = read_jsonl_records([path], note, kind, 1) if _kind(path) == "jsonl" else \
        _take(_iter_records(path, note), 1)
    if not records:
        raise ValueError(f"No records in {path!r}: the file holds none.")
    return records[0], found[0]


def _take(records: Iterator[dict], limit: int | None) -> list[dict]:
    out = []
    for record in records:
        if limit is not None and len(out) >= limit:
            break
        out.append(record)
    return out


def _kind(path: str) -> str:
    if path.endswith(".parquet"):
        return "parquet"
    if path.endswith(".json"):
        with open(path, "rb") as f:
            head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
        return "json" if head.startswith(b"[") else "jsonl"
    return "jsonl"


def _iter_records(path: str, check: Check) -> Iterator[dict]:
    rows = _parquet_rows(path) if _kind(path) == "parquet" else _json_array(path)
    for where, record in rows:
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object (a record), got {type(record).__name__}. Write each "
                             "record as {\"field\": value, ...}.")
        check(record, where)
        yield record


def _json_array(path: str) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as f:
        raw = f.read().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1}). Save the file "
                         "as UTF-8.") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno} column {e.colno}: malformed JSON ({e.msg}). A .json file holds one "
                         "array of records, [{...}, {...}]; fix the file (or write one record per line as "
                         ".jsonl).") from None
    except _DuplicateKey as e:
        raise ValueError(f"{path}: a record repeats the key {e.args[0]!r}; JSON readers would keep only the last "
                         "value. Keep one.") from None
    for i, record in enumerate(data):
        yield f"{path}, record [{i}]", record


def _parquet_rows(path: str) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"Reading {path!r} needs pyarrow: pip install 'nemo_peft[parquet]' (or pip install "
                          "pyarrow), or convert the file to JSONL.") from None
    try:
        table = pq.ParquetFile(path)
        row = 0
        for batch in table.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield f"{path}, row {row}", record
                row += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"Cannot read {path!r} as Parquet ({type(e).__name__}: {e}); the file is damaged or not "
                         "Parquet.") from None
