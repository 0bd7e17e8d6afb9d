"""``model.peft`` in the Hydra config -> PEFT config objects.

NeMo's layout: ``peft_scheme`` names one or more registered methods (a comma list),
each with its options in its own section (the class's ``section``, e.g. ``lora_tuning``).
Everything here comes from the registry, so a newly registered method needs no edit.
"""
from __future__ import annotations

from collections.abc import Mapping

import nemo_peft.peft  # noqa: F401  (registers every built-in method)
from nemo_peft.peft.base import PEFT_METHODS, PEFTConfig


def peft_schemes() -> dict[str, str]:
    """Scheme name -> its section in ``model.peft``, for every registered method."""
    return {name: cls.section for name, cls in PEFT_METHODS.items()}


def parse_schemes(scheme) -> list[str]:
    names = scheme.split(",") if isinstance(scheme, str) else list(scheme or [])
    names = [n.strip() for n in names if n and n.strip()]
    unknown = [n for n in names if n not in PEFT_METHODS]
    if unknown:
        raise ValueError(f"Unknown model.peft.peft_scheme {unknown}; choose from {sorted(PEFT_METHODS)} "
                         "(several as a comma list, e.g. ptuning,adapter).")
    return names


def configs_from_peft_section(peft: Mapping, tokenizer=None) -> list[PEFTConfig]:
    """Build the configs named by ``peft['peft_scheme']`` from their sections; a method whose
    section is absent gets its dataclass defaults."""
    cfgs = []
    for name in parse_schemes(peft.get("peft_scheme")):
        cls = PEFT_METHODS[name]
        cfgs.append(cls.from_section(dict(peft.get(cls.section) or {}), tokenizer))
    return cfgs
