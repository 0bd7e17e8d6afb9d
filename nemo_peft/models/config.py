"""What the model config dataclasses share: plain-dict round trips that reject unknown keys."""
from __future__ import annotations

from dataclasses import asdict, fields


class ModelConfig:
    """Base of the model config dataclasses (GPTConfig, T5Config): ``to_dict()`` and ``from_dict(d)``,
    where a key that is not a field fails with the valid ones (a typo should not pass silently)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} keys {unknown}; valid keys: {sorted(known)}.")
        return cls(**d)
