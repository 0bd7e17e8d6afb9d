"""PEFTConfig: the base of every method's config, and the registry of methods.

A config is a dataclass. ``build_adapters`` gets every slot of the model at once
(as ``SlotContext``s) and returns the adapters to put in the slots it fills, so a
method can check its targets against the whole model and fail with one clear error.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from torch import nn

from nemo_peft.core.slots import SlotSpec

PEFT_METHODS: dict[str, type["PEFTConfig"]] = {}

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


@dataclass
class SlotContext:
    """One slot of one block, as a config sees it when deciding what to build."""

    path: str  # dotted path of the block, e.g. "layers.3.self_attention"
    block: nn.Module
    spec: SlotSpec

    @property
    def layer_number(self) -> int | None:
        """1-based layer number (NeMo's ``layer_selection`` convention), or None."""
        m = _LAYER_RE.search(self.path)
        return int(m.group(1)) + 1 if m else None

    @property
    def host_path(self) -> str:
        return f"{self.path}.{self.spec.host}" if self.spec.host else f"{self.path}.{self.spec.name}"

    @property
    def key(self) -> tuple[str, str]:
        return self.path, self.spec.name


def register(name: str):
    def deco(cls):
        cls.method = name
        PEFT_METHODS[name] = cls
        return cls
    return deco


@dataclass
class PEFTConfig:
    method: ClassVar[str] = "base"

    def build_adapters(self, slots: list[SlotContext]) -> dict[tuple[str, str], nn.Module]:
        """Map (block path, slot name) -> a new adapter module for the slots this method fills."""
        raise NotImplementedError

    def in_layer_selection(self, ctx: SlotContext) -> bool:
        sel = getattr(self, "layer_selection", None)
        return not sel or ctx.layer_number in set(sel)

    # --- serialization ---
    def to_dict(self) -> dict:
        return {"method": self.method, **asdict(self)}

    @staticmethod
    def from_dict(d: dict) -> "PEFTConfig":
        d = dict(d)
        method = d.pop("method", None)
        if method not in PEFT_METHODS:
            raise ValueError(f"Unknown PEFT method {method!r}; known methods: {sorted(PEFT_METHODS)}.")
        return PEFT_METHODS[method].from_kwargs(d)

    @classmethod
    def from_kwargs(cls, d: dict) -> "PEFTConfig":
        """Build from a mapping, accepting the NeMo 1.x aliases in ``aliases``."""
        d = {getattr(cls, "aliases", {}).get(k, k): v for k, v in dict(d).items()}
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(
                f"Unknown option(s) {unknown} for {cls.__name__}; valid options: {sorted(valid)}"
                + (f" (NeMo aliases: {sorted(cls.aliases)})" if getattr(cls, "aliases", None) else "")
                + "."
            )
        return cls(**d)
