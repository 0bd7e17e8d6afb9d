"""What a resumed run compares with its checkpoint: the adapter configs, field by field."""
from __future__ import annotations

import json


def plain(value):
    return json.loads(json.dumps(value, default=str))  # tuples -> lists, as a checkpoint round trip gives


def adapter_config_diffs(saved: dict, model) -> list[str]:
    """``name (method) field: saved -> now`` for every adapter config field that differs."""
    now = {n: [c.to_dict() for c in model.adapter_configs(n)] for n in model.adapter_names}
    diffs = []
    for name in list(saved) + [n for n in now if n not in saved]:
        if name not in now or name not in saved:
            where = "the checkpoint" if name in saved else "this model"
            diffs.append(f"adapter {name!r}: only in {where}")
            continue
        old, new = plain(saved[name]), plain(now[name])
        if [c.get("method") for c in old] != [c.get("method") for c in new]:
            diffs.append(f"{name} method: {[c.get('method') for c in old]} -> {[c.get('method') for c in new]}")
            continue
        for a, b in zip(old, new):
            for key in list(a) + [k for k in b if k not in a]:
                was, isnow = a.get(key, "(unset)"), b.get(key, "(unset)")
                if was != isnow:
                    diffs.append(f"{name} ({a['method']}) {key}: {was!r} -> {isnow!r}")
    return diffs
