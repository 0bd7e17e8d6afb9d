"""Reading a JSON object from a file with errors that name the file (configs, adapter metadata)."""
from __future__ import annotations

import json
import os


def read_json(path: str, hint: str = "") -> dict:
    """The JSON object in ``path`` (UTF-8, a leading BOM allowed); ``hint`` says how to recover."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path!r} is not valid JSON (not UTF-8 text: {e}).{hint}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path!r} is not valid JSON ({e}).{hint}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path!r} holds a JSON {type(data).__name__}, not an object.{hint}")
    return data


def read_json_if_exists(path: str, hint: str = "") -> dict | None:
    """``read_json(path)``, or None when there is no such file (an optional side file)."""
    return read_json(path, hint) if os.path.isfile(path) else None
