"""PEFTConfig: the base of every method's config, and ``register``, which makes a method usable.

A config is a dataclass. ``build_adapters`` gets every slot of the model at once
(as ``SlotContext``s) and returns the adapters to put in the slots it fills, so a
method can check its targets against the whole model and fail with one clear error.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import ClassVar

from torch import nn

from nemo_peft.core.registry import METHODS as PEFT_METHODS  # noqa: F401  (re-exported)
from nemo_peft.core.registry import config_from_dict, register_method
from nemo_peft.core.slots import SlotContext


def register(method: str, section: str | None = None):
    """Class decorator: ``method`` is the scheme name (``model.peft.peft_scheme``, and what saved
    adapters record); ``section`` is the ``model.peft`` key holding its options (default: ``method``).
    Registering is all it takes for ``PEFTConfig.from_dict``, ``configs_from_peft_section`` and
    Hydra (given a ``conf/peft/<method>.yaml``) to know the method."""
    def deco(cls):
        cls.method, cls.section = method, section or method
        return register_method(cls)
    return deco


@dataclass
class PEFTConfig:
    method: ClassVar[str] = "base"
    section: ClassVar[str] = ""

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
        return config_from_dict(d)

    @classmethod
    def from_section(cls, options: dict, tokenizer=None) -> "PEFTConfig":
        """Build from the method's ``model.peft`` section. The recipes pass their tokenizer, for
        methods whose options need one (prompt tuning's ``init_text``); override to use it."""
        return cls.from_kwargs(options)

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
