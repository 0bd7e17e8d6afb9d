"""Weighted linear combination of LoRA adapters into one new LoRA adapter, exactly.

For every host linear the new update is  sum_i w_i * s_i * B_i @ A_i  (s_i = the
adapter's alpha/dim or rsLoRA scale). Ranks are concatenated rather than
re-factorised, so nothing is approximated: per output part p

    A_new_p = [A_1p; A_2p; ...]                [sum r_i, in]
    B_new_p = [w_1 s_1 B_1p, w_2 s_2 B_2p, ...] [size_p, sum r_i]

with scale s_new = alpha/dim = 1. A host an adapter does not cover contributes
nothing (it is simply left out of that host's concatenation, so the rank there is
the sum over the adapters present). Where the adapters slice a fused host
differently (one fused over q|k|v, another on q and v only), the new adapter uses
one slice per covered named part, which represents both exactly.

The new adapter's ``LoraPEFTConfig``s reproduce this structure precisely (fused
hosts by escaped module-path regexes, per-part hosts by HF part names plus
``layer_selection``), so ``save_adapters``/``load_adapters`` round-trip it.

The entry point is ``LoraPEFTConfig.add_weighted_adapter``, which passes its class in:
this module does not import ``lora.py`` (which imports it), so there is no import cycle.
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch

from nemo_peft.core.slots import host_parts
from nemo_peft.peft.base import SlotContext

# named part of a fused host -> the HF target name that selects exactly that part
PART_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "gate": "gate_proj", "up": "up_proj"}


def add_weighted_adapter(lora_config: type, model, adapters, weights, new_name: str, activate: bool = False) -> None:
    """Add LoRA adapter ``new_name`` = sum_i weights[i] * adapters[i] (see the module docstring).

    ``lora_config`` is ``LoraPEFTConfig``: the sources must be its ``adapter_class`` and the new
    adapter is made from its configs. The source adapters are left untouched. The new adapter is
    added inactive unless ``activate`` (then it joins the active ones); the active set is otherwise unchanged.
    """
    adapters, weights = _validate(model, adapters, weights, new_name, lora_config.adapter_class)
    plan = _plan(model, adapters, weights)
    cfgs = _configs(plan, lora_config)
    previously_active = model.active_adapters
    model.add_adapter(cfgs, name=new_name)
    try:
        _fill(model, new_name, plan)
    except Exception:
        model.delete_adapter(new_name)
        raise
    model.set_active_adapters(previously_active + ([new_name] if activate else []))


def _validate(model, adapters, weights, new_name, lora_adapter: type):
    adapters = [adapters] if isinstance(adapters, str) else list(adapters)
    weights = [float(w) for w in ([weights] if isinstance(weights, (int, float)) else weights)]
    if not adapters:
        raise ValueError("add_weighted_adapter needs at least one adapter to combine.")
    if len(adapters) != len(weights):
        raise ValueError(f"add_weighted_adapter got {len(adapters)} adapters but {len(weights)} weights; "
                         "give one weight per adapter.")
    unknown = [n for n in adapters if n not in model.adapter_names]
    if unknown:
        raise ValueError(f"Unknown adapter(s) {unknown}; this model has {model.adapter_names}.")
    if new_name in model.adapter_names or new_name == "__base__":
        raise ValueError(f"Cannot name the combined adapter {new_name!r}: "
                         + ("the name is reserved for the base model." if new_name == "__base__"
                            else "an adapter of that name exists; pick another name or delete it first."))
    for path, slot in model.adapter_slots_by_path().items():
        for n in adapters:
            if n in slot.adapters and not isinstance(slot.adapters[n], lora_adapter):
                raise ValueError(f"Adapter {n!r} is not a LoRA adapter ({type(slot.adapters[n]).__name__} at "
                                 f"{path}); add_weighted_adapter combines LoRA adapters only.")
            if n in slot.adapters and hasattr(slot.adapters[n], "magnitude"):  # DoRA subclasses LoRA
                raise ValueError(f"Adapter {n!r} is DoRA ({type(slot.adapters[n]).__name__} at {path}): its "
                                 "magnitudes rescale W + s·B·A row-wise, so it is no sum of B·A terms; "
                                 "add_weighted_adapter combines plain LoRA (or QLoRA) adapters only.")
    return adapters, weights


def _plan(model, adapters, weights) -> list[dict]:
    """Per LoRA slot any source covers: the new slices and the (weight, adapter) sources."""
    plan = []
    for path, slot in model.adapter_slots_by_path().items():
        sources = [(w, slot.adapters[n]) for n, w in zip(adapters, weights) if n in slot.adapters]
        if not sources:
            continue
        block_path, _ = path.rsplit(".", 1)
        block = model.get_submodule(block_path)
        full = [(0, getattr(block, slot.spec.host).out_features)]
        if all(ad.out_slices == full for _, ad in sources):
            parts = None
            slices = full
        else:  # one slice per named part any source touches
            named = host_parts(block, slot.spec.host)
            parts = [p for p, sl in named.items() if any(_overlap(sl, s) for _, ad in sources for s in ad.out_slices)]
            slices = [named[p] for p in parts]
            missing = [p for p in parts if p not in PART_TARGETS]
            if missing:
                raise ValueError(f"Cannot combine the LoRA adapters at {path}: part(s) {missing} of "
                                 f"{slot.spec.host} have no target name.")
        ctx = SlotContext(block_path, block, slot.spec)
        plan.append(dict(path=path, ctx=ctx, parts=parts, slices=slices, sources=sources,
                         dim=sum(ad.dim for _, ad in sources)))
    if not plan:
        raise ValueError("The adapters to combine hold no LoRA weights.")
    return plan


def _configs(plan, lora_config: type) -> list:
    """One config per (host, parts, rank) group: exactly the slots of the plan, nothing else."""
    groups = defaultdict(list)
    for item in plan:
        groups[(item["ctx"].spec.host, tuple(item["parts"] or ()), item["dim"])].append(item["ctx"])
    cfgs = []
    for (_, parts, dim), ctxs in groups.items():
        common = dict(dim=dim, alpha=float(dim), dropout=0.0)  # scale alpha/dim = 1
        if not parts:  # the whole host: name each host by its exact module path
            cfgs.append(lora_config(target_modules=[re.escape(c.host_path) for c in ctxs], **common))
            continue
        layers = sorted({c.layer_number for c in ctxs})
        if None in layers:
            raise ValueError(f"Cannot describe per-part LoRA at {ctxs[0].host_path} (not inside a numbered layer) "
                             "with a LoRA config.")
        cfgs.append(lora_config(target_modules=[PART_TARGETS[p] for p in parts], layer_selection=layers,
                                **common))
    return cfgs


@torch.no_grad()
def _fill(model, new_name, plan) -> None:
    slots = model.adapter_slots_by_path()
    built = {p for p, s in slots.items() if new_name in s.adapters}
    if built != {item["path"] for item in plan}:
        raise RuntimeError(f"Internal error: the combined adapter's configs filled {sorted(built)}, "
                           f"expected {sorted(item['path'] for item in plan)}.")
    for item in plan:
        new = slots[item["path"]].adapters[new_name]
        if new.out_slices != item["slices"] or new.dim != item["dim"] or new.scale != 1.0:
            raise RuntimeError(f"Internal error: combined adapter at {item['path']} has slices {new.out_slices}, "
                               f"rank {new.dim}; expected {item['slices']}, rank {item['dim']}.")
        for p, (start, size) in enumerate(item["slices"]):
            a_blocks, b_blocks = [], []
            for w, ad in item["sources"]:
                a, b = _part(ad, start, size, item["path"])
                a_blocks.append(a.float())
                b_blocks.append(b.float() * (w * ad.scale))
            new.write_part(p, torch.cat(a_blocks, dim=0), torch.cat(b_blocks, dim=1))  # fp32, rounded once


def _part(ad, start: int, size: int, path: str):
    """(A [r, in], B [size, r]) of LoRA adapter ``ad`` restricted to output rows start..start+size
    (zeros if uncovered)."""
    for part in ad.parts():
        if part.start <= start and start + size <= part.start + part.size:
            return part.a, part.b[start - part.start:start - part.start + size]
        if _overlap((part.start, part.size), (start, size)):
            raise ValueError(f"Cannot combine the LoRA adapters at {path}: slice {(part.start, part.size)} of "
                             f"one adapter partly overlaps output part {(start, size)}.")
    a, b = ad.part_weights(0)
    return a.new_zeros(a.shape), b.new_zeros(size, ad.dim)


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]
