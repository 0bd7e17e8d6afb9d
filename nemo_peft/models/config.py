"""What the model config dataclasses share: plain-dict round trips that reject unknown keys."""
from __future__ import annotations

from dataclasses import asdict, fields


def check_keys(cls, d: dict, what: str, noun: str = "option(s)") -> dict:
    """``d`` as keyword arguments of dataclass ``cls``; a key that is not a field fails naming ``what``
    (e.g. "model.generation") and the valid keys (a typo should not pass silently)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"Unknown {what} {noun} {unknown}; valid {noun.replace('(s)', 's')}: {sorted(known)}.")
    return dict(d)


class ModelConfig:
    """Base of the model config dataclasses (GPTConfig, T5Config): ``to_dict()`` and ``from_dict(d)``,
    where a key that is not a field fails with the valid ones (a typo should not pass silently)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**check_keys(cls, d, cls.__name__, noun="keys"))
