"""``model.peft`` in the Hydra config -> PEFT config objects.

NeMo's layout: ``peft_scheme`` names one or more schemes (comma list), each with
its own section, e.g. ``lora_tuning`` for ``lora``.
"""
from __future__ import annotations

from collections.abc import Mapping

from nemo_peft.peft.base import PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig

# scheme name -> (section in model.peft, config class)
PEFT_SCHEMES: dict[str, tuple[str, type[PEFTConfig]]] = {
    "lora": ("lora_tuning", LoraPEFTConfig),
}


def parse_schemes(scheme) -> list[str]:
    names = scheme.split(",") if isinstance(scheme, str) else list(scheme or [])
    names = [n.strip() for n in names if n and n.strip()]
    unknown = [n for n in names if n not in PEFT_SCHEMES]
    if unknown:
        raise ValueError(f"Unknown model.peft.peft_scheme {unknown}; choose from {sorted(PEFT_SCHEMES)} "
                         "(several as a comma list).")
    return names


def configs_from_peft_section(peft: Mapping) -> list[PEFTConfig]:
    """Build the configs named by ``peft['peft_scheme']`` from their sections."""
    cfgs = []
    for name in parse_schemes(peft.get("peft_scheme")):
        section, cls = PEFT_SCHEMES[name]
        if section not in peft:
            raise ValueError(f"model.peft.peft_scheme includes {name!r} but model.peft.{section} is missing; "
                             f"add the section (see conf/peft/{name}.yaml).")
        cfgs.append(cls.from_kwargs(dict(peft[section] or {})))
    return cfgs
