"""``model.peft`` in the Hydra config -> PEFT config objects.

NeMo's layout: ``peft_scheme`` names one or more schemes (a comma list), each with
its own section, e.g. ``lora_tuning`` for ``lora``.
"""
from __future__ import annotations

from collections.abc import Mapping

import nemo_peft.peft  # noqa: F401  (registers every method)
from nemo_peft.peft.base import PEFT_METHODS, PEFTConfig

# scheme name -> (section in model.peft, registered method name)
PEFT_SCHEMES: dict[str, tuple[str, str]] = {
    "lora": ("lora_tuning", "lora"),
    "adapter": ("adapter_tuning", "adapter"),
    "ia3": ("ia3_tuning", "ia3"),
    "ptuning": ("p_tuning", "ptuning"),
    "prompt_tuning": ("prompt_tuning", "prompt_tuning"),
    "prefix_tuning": ("prefix_tuning", "prefix_tuning"),
    "dora": ("dora_tuning", "dora"),
    "qlora": ("qlora_tuning", "qlora"),
}


def parse_schemes(scheme) -> list[str]:
    names = scheme.split(",") if isinstance(scheme, str) else list(scheme or [])
    names = [n.strip() for n in names if n and n.strip()]
    unknown = [n for n in names if n not in PEFT_SCHEMES]
    if unknown:
        raise ValueError(f"Unknown model.peft.peft_scheme {unknown}; choose from {sorted(PEFT_SCHEMES)} "
                         "(several as a comma list, e.g. ptuning,adapter).")
    return names


def configs_from_peft_section(peft: Mapping, tokenizer=None) -> list[PEFTConfig]:
    """Build the configs named by ``peft['peft_scheme']`` from their sections."""
    cfgs = []
    for name in parse_schemes(peft.get("peft_scheme")):
        section, method = PEFT_SCHEMES[name]
        if section not in peft:
            raise ValueError(f"model.peft.peft_scheme includes {name!r} but model.peft.{section} is missing; "
                             "add the section (see conf/peft/sections.yaml).")
        options = dict(peft[section] or {})
        if options.get("init_text") and tokenizer is not None and not options.get("init_token_ids"):
            options["init_token_ids"] = tokenizer.encode(options["init_text"])  # prompt tuning from text
        cfgs.append(PEFT_METHODS[method].from_kwargs(options))
    return cfgs
