"""PEFTConfig: the base of every method's config, and ``register``, which makes a method usable.

A config is a dataclass. ``build_adapters`` gets every slot of the model at once
(as ``SlotContext``s) and returns the adapters to put in the slots it fills, so a
method can check its targets against the whole model and fail with one clear error.
"""
from __future__ import annotations

import math
import numbers
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


# --- option checks, called from each config's ``__post_init__`` (so at config time, for code and Hydra alike) ---

def option_error(cfg: PEFTConfig, name: str, problem: str, item=None) -> ValueError:
    """``LoraPEFTConfig.alpha=-4: must be > 0 (model.peft.lora_tuning.alpha)``: the Hydra key to fix.
    ``item``: the entry of a mapping option (``rank_pattern['q_proj']``) that is wrong."""
    cls = type(cfg)
    value = getattr(cfg, name)
    shown = f"{name}={value!r}" if item is None else f"{name}[{item!r}]={value[item]!r}"
    hydra_key = f" (model.peft.{cls.section}.{name})" if cls.section else ""
    return ValueError(f"{cls.__name__}.{shown}: {problem}{hydra_key}")


def check_number(cfg: PEFTConfig, name: str, *, integer: bool = False, at_least: float | None = None,
                 above: float | None = None, below: float | None = None) -> None:
    """A finite number within the bounds; an integer option given as 8.0 is stored as 8."""
    value = getattr(cfg, name)
    if not is_number(value) or (integer and value != int(value)):
        raise option_error(cfg, name, f"must be {'an integer' if integer else 'a finite number'}")
    bounds = [f"{op} {b:g}" for op, b in ((">=", at_least), (">", above), ("<", below)) if b is not None]
    if ((at_least is not None and value < at_least) or (above is not None and value <= above)
            or (below is not None and value >= below)):
        raise option_error(cfg, name, "must be " + " and ".join(bounds))
    if integer:
        setattr(cfg, name, int(value))


def check_choice(cfg: PEFTConfig, name: str, valid) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, str) or value not in valid:
        raise option_error(cfg, name, f"choose one of {sorted(valid)}")


def check_flag(cfg: PEFTConfig, name: str) -> None:
    """True or false: a string such as "false" would otherwise count as true."""
    value = getattr(cfg, name)
    if not isinstance(value, bool) and value not in (0, 1):
        raise option_error(cfg, name, "must be true or false")
    setattr(cfg, name, bool(value))


def check_layer_selection(cfg: PEFTConfig, name: str = "layer_selection") -> None:
    """None (all layers) or a list of 1-based layer numbers; a 0 would silently select nothing."""
    value = getattr(cfg, name)
    if value is None:
        return
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise option_error(cfg, name, "must be a list of 1-based layer numbers, or null for all layers")
    layers = list(value)
    bad = [i for i in layers if not is_number(i) or i != int(i) or i < 1]
    if bad:
        raise option_error(cfg, name, f"{bad} are not layer numbers; they are 1-based integers (>= 1)")
    setattr(cfg, name, [int(i) for i in layers])


def is_number(value) -> bool:
    """A finite int or float (numpy's too), not a bool."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
