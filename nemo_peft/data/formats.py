"""Chat and instruction record formats, each read into a list of {"role", "content"} messages.

- ``messages``: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
- ``sharegpt``: {"conversations": [{"from": "system" | "human" | "user" | "gpt" | "assistant",
  "value": "..."}, ...]}
- ``alpaca``: {"instruction": "...", "input": "..." (optional, may be empty), "output": "..."}:
  one user turn, instruction + "\\n\\n" + input (just the instruction without input), and the
  output as the assistant turn.

``prompt_template`` (SFTDataset's own format) has no messages; ``auto`` picks the format from the
first record's keys, and every later record must have the same shape ("mixed formats" otherwise).
"""
from __future__ import annotations

from nemo_peft.data.jsonl import check_text_fields

CHAT_FORMATS = ("messages", "sharegpt", "alpaca")
FORMATS = ("auto", "prompt_template", *CHAT_FORMATS)
ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
# the key that marks each format, in detection order
_MARKER = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction"}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r} is not a data format; valid: {', '.join(FORMATS)} (auto detects the format "
                         "from the first record's keys).")
    return fmt


def detect_format(record: dict) -> str | None:
    """The chat format a record's keys say, or None (no chat format: prompt_template data)."""
    return next((fmt for fmt, key in _MARKER.items() if key in record), None)


def _shape(record: dict) -> str:
    fmt = detect_format(record)
    return f"{fmt} (it has {_MARKER[fmt]!r})" if fmt else f"not a chat record (keys {sorted(record)})"


class MessageReader:
    """Reads records of one format (or ``auto``: the first record's) into messages, raising for a
    record of another shape; ``where`` ("file, line N") starts each error message."""

    def __init__(self, fmt: str = "auto"):
        if check_format(fmt) == "prompt_template":
            raise ValueError("format=prompt_template records have no messages; SFTDataset reads them.")
        self.format = None if fmt == "auto" else fmt
        self.auto = fmt == "auto"
        self._first_where: str | None = None

    def __call__(self, record: dict, where: str) -> list[dict]:
        found = detect_format(record)
        if self.format is None:  # auto, first record
            if found is None:
                raise ValueError(f"{where}: the record matches no chat format (keys present: {sorted(record)}); "
                                 "format=auto looks for 'messages' (messages), 'conversations' (sharegpt) or "
                                 "'instruction' (alpaca). For prompt/label records use format=prompt_template.")
            self.format, self._first_where = found, where
        elif found != self.format:
            if self.auto:
                raise ValueError(f"{where}: mixed formats: this record is {_shape(record)}, but the first record "
                                 f"({self._first_where}) is {self.format}. A split's files must hold one format: "
                                 "convert the odd records, or put them in another split.")
            key = _MARKER[self.format]
            hint = f" It looks like {found} data: set format={found} (or auto)." if found else ""
            raise ValueError(f"{where}: format={self.format} expects a {key!r} field, but the record has keys "
                             f"{sorted(record)}.{hint}")
        if self.format == "alpaca":
            return _alpaca(record, where)
        if self.format == "sharegpt":
            return _turns(record["conversations"], where, "conversations", "from", "value", _SHAREGPT_ROLES)
        return _turns(record["messages"], where, "messages", "role", "content", {r: r for r in ROLES})


def _turns(items, where: str, field: str, role_key: str, content_key: str, roles: dict) -> list[dict]:
    other = ("from", "value") if role_key == "role" else ("role", "content")
    if not isinstance(items, list):
        raise ValueError(f"{where}: {field!r} must be a JSON array of {{{role_key!r}: ..., {content_key!r}: ...}} "
                         f"objects, got a {type(items).__name__}.")
    if not items:
        raise ValueError(f"{where}: {field!r} is an empty list; a conversation needs messages (at least a user turn "
                         "and an assistant turn). Remove the record or fill it.")
    messages = []
    for i, item in enumerate(items):
        at = f"{where}, {field}[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected an object {{{role_key!r}: ..., {content_key!r}: ...}}, "
                             f"got a {type(item).__name__}.")
        for key in (role_key, content_key):
            if key not in item:
                hint = (f". Its keys {sorted(item)} look like the other spelling ({other[0]!r}/{other[1]!r}): use "
                        f"format={'sharegpt' if role_key == 'role' else 'messages'} with "
                        f"{'conversations' if role_key == 'role' else 'messages'}, or rename the keys."
                        if other[0] in item else f" (keys present: {sorted(item)}); add it.")
                raise ValueError(f"{at}: the message has no {key!r}{hint}")
        role = item[role_key]
        if not isinstance(role, str) or role not in roles:
            raise ValueError(f"{at}: unknown role {role!r} in {role_key!r}; valid: {', '.join(roles)}. Rename the "
                             "role or drop the message (tool and function turns are not supported).")
        check_text_fields(item, at, {content_key: f"the {roles[role]} message's text"})
        messages.append({"role": roles[role], "content": item[content_key]})
    return messages


def _alpaca(record: dict, where: str) -> list[dict]:
    # null is "absent" here: Parquet and pandas write a missing optional column as null
    present = {k: "alpaca format" for k in ("instruction", "input", "output") if record.get(k) is not None}
    if "instruction" not in present:
        raise ValueError(f"{where}: 'instruction' is null; alpaca records need the instruction text.")
    check_text_fields(record, where, present)
    user = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")
    messages = [{"role": "user", "content": user}]
    if "output" in present:
        messages.append({"role": "assistant", "content": record["output"]})
    return messages
