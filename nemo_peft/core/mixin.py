"""AdapterMixin: add, activate, save and load named adapters on any adapter-capable model.

The mixin walks the model for blocks that declare ``adapter_slots``, asks each PEFT
config which slots it fills, puts the built adapters there under a name, and
freezes everything that is not an adapter.
"""
from __future__ import annotations

import contextlib
import re
from collections import defaultdict

import torch
from torch import nn

from nemo_peft.core import adapter_io, routing
from nemo_peft.core.fingerprint import base_fingerprint, check_base
from nemo_peft.core.registry import config_from_dict
from nemo_peft.core.slots import AdapterSlot, SlotContext


class AdapterMixin:
    # ---- discovery ----
    def slot_contexts(self) -> list[SlotContext]:
        return [
            SlotContext(path, block, spec)
            for path, block in self.named_modules()
            if hasattr(type(block), "adapter_slots")
            for spec in type(block).adapter_slots
        ]

    def adapter_slots_by_path(self) -> dict[str, AdapterSlot]:
        return {p: m for p, m in self.named_modules() if isinstance(m, AdapterSlot)}

    @property
    def adapter_names(self) -> list[str]:
        return list(getattr(self, "_adapter_configs", {}))

    def adapter_configs(self, name: str) -> list:
        return self._adapter_configs[name]

    # ---- adding ----
    def add_adapter(self, peft_cfgs, name: str = "default") -> None:
        """Fill the slots matched by one config or a list of configs, under ``name``.

        Afterwards the base is frozen, every adapter is trainable, and ``name`` is active.
        """
        cfgs = peft_cfgs if isinstance(peft_cfgs, (list, tuple)) else [peft_cfgs]
        cfgs = [config_from_dict(c) if isinstance(c, dict) else c for c in cfgs]
        if not cfgs:
            raise ValueError("add_adapter needs at least one PEFT config.")
        if name in self.adapter_names:
            raise ValueError(f"An adapter named {name!r} already exists; use another name or delete it first.")
        base = base_fingerprint(self)  # before a method (QLoRA) changes the host weights
        contexts = self.slot_contexts()
        plan: dict[tuple[str, str], nn.Module] = {}
        for cfg in cfgs:
            built = cfg.build_adapters(contexts)
            clash = sorted(set(plan) & set(built))
            if clash:
                raise ValueError(
                    f"Two configs of adapter {name!r} fill the same slot {'.'.join(clash[0])}; "
                    "merge their targets into one config or add them under different names."
                )
            plan.update(built)
        for (path, slot_name), adapter in plan.items():
            block = self.get_submodule(path)
            ref = next(block.parameters())
            adapter.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
            adapter.train(self.training)  # an adapter added to an eval model must not run dropout
            getattr(block, slot_name).add(name, adapter)
        if not hasattr(self, "_adapter_configs"):
            self._adapter_configs, self._base_fingerprints = {}, {}
        self._adapter_configs[name] = cfgs
        self._base_fingerprints[name] = base
        self.freeze_base()
        self.set_active_adapters(self.active_adapters + [name])

    def delete_adapter(self, name: str) -> None:
        """Remove ``name`` from every slot, the configs and the active list (unmerge it first)."""
        routing.delete_adapter(self, name)

    def add_weighted_adapter(self, adapters, weights, new_name: str, activate: bool = False) -> None:
        """New LoRA adapter ``new_name`` whose update is exactly sum_i weights[i] * scale_i * B_i @ A_i.

        LoRA adapters only. Added inactive (the active set is unchanged) unless ``activate``.
        The first adapter's config class does the work (its ``add_weighted_adapter`` classmethod;
        see ``nemo_peft.peft.combine``)."""
        names = [adapters] if isinstance(adapters, str) else list(adapters)
        unknown = [n for n in names if n not in self.adapter_names]
        if not names or unknown:
            raise ValueError(f"Unknown adapter(s) {unknown} in add_weighted_adapter; this model has "
                             f"{self.adapter_names}.")
        combine = getattr(type(self._adapter_configs[names[0]][0]), "add_weighted_adapter", None)
        if combine is None:
            kinds = sorted({type(c).__name__ for c in self._adapter_configs[names[0]]})
            raise ValueError(f"Adapter {names[0]!r} is not a LoRA adapter ({', '.join(kinds)}); "
                             "add_weighted_adapter combines LoRA adapters only.")
        combine(self, names, weights, new_name, activate=activate)

    def freeze_base(self) -> None:
        """Only adapter parameters train; the base is frozen."""
        for p in self.parameters():
            p.requires_grad_(False)
        for slot in self.adapter_slots_by_path().values():
            for p in slot.adapters.parameters():
                p.requires_grad_(True)

    # ---- activation ----
    @property
    def active_adapters(self) -> list[str]:
        return list(getattr(self, "_active_adapters", []))

    def set_active_adapters(self, names) -> None:
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.adapter_names]
        if unknown:
            raise ValueError(f"Unknown adapter(s) {unknown}; this model has {self.adapter_names}.")
        self._active_adapters = names
        for slot in self.adapter_slots_by_path().values():
            slot.set_active(names)

    def set_enabled_adapters(self, name: str | None = None, enabled: bool = True) -> None:
        """NeMo's switch: enable/disable one adapter by name, or all when name is None."""
        names = self.adapter_names if name is None else [name]
        active = [n for n in self.active_adapters if n not in names]
        self.set_active_adapters(active + names if enabled else active)

    @contextlib.contextmanager
    def disable_adapters(self):
        """Run the base model alone inside the ``with`` block."""
        if self.merged_adapters:
            raise RuntimeError(f"Adapter(s) {self.merged_adapters} are merged into the base weights; "
                               "call unmerge_adapters() before disabling them.")
        saved = self.active_adapters
        self.set_active_adapters([])
        try:
            yield self
        finally:
            self.set_active_adapters(saved)

    def route(self, adapter_names):
        """Context manager for mixed batches: row i runs only adapter ``adapter_names[i]``
        (``None`` / ``"__base__"``: the base model), whatever is active; restored on exit.

        ``with model.route(["a", None, "b"]): logits = model(ids)``; ``generate`` works inside too.
        LoRA, IA3 and canonical adapters only (not virtual-token / prefix ones); nothing may be merged."""
        return routing.route(self, adapter_names)

    # ---- memory ----
    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each transformer layer in backward instead of keeping its activations
        (NeMo's ``activations_checkpoint_granularity: full``): far less training memory for
        about one more forward pass. Generation and evaluation are unaffected."""
        stacks = [m for m in self.modules() if hasattr(m, "activation_checkpointing")]
        if not stacks:
            raise ValueError(f"{type(self).__name__} has no layer stack that supports activation checkpointing.")
        for stack in stacks:
            stack.activation_checkpointing = bool(enabled)

    # ---- merging ----
    @property
    def merged_adapters(self) -> list[str]:
        merged = set().union(*(s.merged for s in self.adapter_slots_by_path().values()))
        return [n for n in self.adapter_names if n in merged]

    def merge_adapters(self, names=None) -> None:
        """Fold adapters (default: the active ones) into the base weights, in place.

        Forward then skips them, so outputs are unchanged; ``unmerge_adapters`` undoes it."""
        names = self.active_adapters if names is None else ([names] if isinstance(names, str) else list(names))
        self._merge(names, sign=1.0)

    def unmerge_adapters(self, names=None) -> None:
        """Take merged adapters (default: all of them) out of the base weights again."""
        self._merge(None if names is None else [names] if isinstance(names, str) else list(names), sign=-1.0)

    def _merge(self, names, sign: float) -> None:
        # one walk of the module tree finds the filled slots, then their blocks (repeated walks, and visiting
        # the empty slots, cost a third as much as the merge's matmuls)
        slots = {p: s for p, s in self.adapter_slots_by_path().items() if len(s.adapters)}
        blocks = {p: self.get_submodule(p.rpartition(".")[0]) for p in slots}
        if names is None:
            names = [n for n in self.adapter_names if any(n in s.merged for s in slots.values())]
        for n in names:  # check everything first: fail before touching any weight
            if n not in self.adapter_names:
                raise ValueError(f"Unknown adapter {n!r}; this model has {self.adapter_names}.")
            for path, slot in slots.items():
                adapter = slot.adapters[n] if n in slot.adapters else None
                if adapter is not None and not hasattr(adapter, "merge"):
                    why = getattr(adapter, "merge_refusal", None) or \
                        "its method has no merge (it is not a weight update)"
                    raise ValueError(f"Adapter {n!r} at {path} ({type(adapter).__name__}) cannot be merged into the "
                                     f"base weights: {why}")
        steps = self._merge_steps(slots, blocks, names) if sign > 0 else self._unmerge_steps(slots, names)
        for path, n in steps:
            slot = slots[path]
            slot.adapters[n].merge(getattr(blocks[path], slot.spec.host), sign)
            if sign > 0:
                slot.merged.add(n)
            else:
                slot.merged.discard(n)
        taken_out = set() if sign > 0 else set(steps)
        self._merge_log = [e for e in getattr(self, "_merge_log", []) if e not in taken_out] + \
            (steps if sign > 0 else [])
        for slot in slots.values():  # merged adapters leave the forward path, unmerged ones come back
            slot.set_active(self.active_adapters)

    @staticmethod
    def _host_of(path: str, slot: AdapterSlot) -> str:
        """The weight a slot's adapters merge into: ``block.host`` (a slot without a host stands alone)."""
        block = path.rpartition(".")[0]
        return f"{block}.{slot.spec.host or slot.spec.name}" if block else slot.spec.host or slot.spec.name

    def _merge_steps(self, slots, blocks, names) -> list[tuple[str, str]]:
        """(slot path, name) to merge, per host in the order forward applies them: slots in declaration
        order, within a slot the active list's order. Merging ``n`` while an adapter that runs before it on
        the same host stays unmerged would change the output (an IA3 scale would miss that adapter's update),
        so that is refused before any weight changes."""
        order = self.active_adapters + [n for n in self.adapter_names if n not in self.active_adapters]
        seqs = defaultdict(list)  # host -> [(slot index, name index), path, name]
        for path, slot in slots.items():
            specs = type(blocks[path]).adapter_slots
            index = [sp.name for sp in specs].index(slot.spec.name)
            for n in slot.adapters:
                seqs[self._host_of(path, slot)].append(((index, order.index(n)), path, n))
        steps = []
        for host, seq in seqs.items():
            seq.sort()
            for i, (_, path, n) in enumerate(seq):
                if n not in names or n in slots[path].merged:
                    continue
                for _, p, m in seq[:i]:
                    if (m not in names and m in self.active_adapters and m not in slots[p].merged
                            and not _commute(slots[p], m, slots[path], n)):
                        raise ValueError(
                            f"Cannot merge {n!r} without {m!r}: {m!r} runs before it on {host} and is not merged, "
                            f"so merging {n!r} alone would change the output; merge {[m, n]} together "
                            f"(or {m!r} first).")
                steps.append((path, n))
        return steps

    def _unmerge_steps(self, slots, names) -> list[tuple[str, str]]:
        """(slot path, name) to unmerge: the exact reverse of the merge order. Unmerging ``n`` while an
        adapter merged after it into the same host stays merged would not restore the weights (DoRA
        rescales what it was merged onto), so that is refused before any weight changes."""
        log = [(p, n) for p, n in getattr(self, "_merge_log", []) if p in slots and n in slots[p].merged]
        missing = [(p, n) for p, s in slots.items() for n in s.merged if (p, n) not in log]
        self._merge_log = log = missing + log  # merged outside _merge (no record): taken as merged first
        for i, (path, n) in enumerate(log):
            if n not in names:
                continue
            host = self._host_of(path, slots[path])
            for p, m in log[i + 1:]:
                if (m not in names and self._host_of(p, slots[p]) == host
                        and not _commute(slots[p], m, slots[path], n)):
                    raise ValueError(
                        f"Cannot unmerge {n!r} while {m!r} stays merged: {m!r} was merged after it into {host}, "
                        f"so taking {n!r} out first would not restore the weights; unmerge {m!r} first "
                        f"(or {[n, m]} together).")
        return [(p, n) for p, n in reversed(log) if n in names]

    # ---- state ----
    def adapter_state_dict(self, name: str | None = None) -> dict[str, torch.Tensor]:
        out = {}
        for path, slot in self.adapter_slots_by_path().items():
            for n, adapter in slot.adapters.items():
                if name is None or n == name:
                    for k, v in adapter.state_dict().items():
                        out[f"{path}.adapters.{n}.{k}"] = v
        return out

    def save_adapters(self, path: str, name: str | None = None) -> None:
        """Write the adapter(s) (configs + safetensors weights) to directory ``path``."""
        names = self.adapter_names if name is None else [name]
        if not names:
            raise ValueError("This model has no adapter to save; call add_adapter first.")
        configs = {n: [c.to_dict() for c in self._adapter_configs[n]] for n in names}
        tensors = {}
        for n in names:
            tensors.update(self.adapter_state_dict(n))
        adapter_io.save(path, configs, tensors, extra={"base_fingerprints": self.base_fingerprints(names)})

    def base_fingerprints(self, names=None) -> dict[str, dict]:
        """Each adapter's record of the base it was added to (``core/fingerprint.py``)."""
        return {n: self._base_fingerprints[n] for n in (self.adapter_names if names is None else names)}

    def load_adapters(self, path: str, cfg=None, name: str | None = None, strict_base: bool = True) -> list[str]:
        """Load adapters saved by ``save_adapters``; create them first if missing.

        ``cfg`` overrides the saved config (a config or list of configs) and
        ``name`` picks one adapter of a file with several. Returns the loaded names.
        An adapter saved on another base model is an error (a warning with ``strict_base=False``).
        Hugging Face PEFT directories load with ``nemo_peft.load_adapters(model, path)``.
        """
        meta, tensors = adapter_io.load(path)
        configs = meta["adapters"]
        names = [name] if name else list(configs)
        for n in names:
            if n not in configs:
                raise ValueError(f"Adapter {n!r} is not in {path}; it holds {list(configs)}.")
        current = base_fingerprint(self)
        saved = meta.get("base_fingerprints")
        for n in names:
            check_base(None if saved is None else saved.get(n), current, f"Adapter {n!r} in {path!r}", strict_base)
            if n not in self.adapter_names:
                self.add_adapter(cfg if cfg is not None else configs[n], name=n)
        wanted = {k: v for k, v in tensors.items() if _adapter_name_of(k) in names}
        own = {k: v for n in names for k, v in self.adapter_state_dict(n).items()}
        adapter_io.copy_checked(own, wanted, path)
        return names

    # ---- reporting ----
    def trainable_parameters_summary(self) -> str:
        """Trainable / total / % and a table by module (layer numbers folded to '*')."""
        rows = defaultdict(lambda: [0, 0])
        for n, p in self.named_parameters():
            key = re.sub(r"\.\d+\.", ".*.", n.rsplit(".", 1)[0])
            rows[key][0] += p.numel() if p.requires_grad else 0
            rows[key][1] += p.numel()
        trainable = sum(r[0] for r in rows.values())
        total = sum(r[1] for r in rows.values())
        width = max(len(k) for k in rows) if rows else 10
        lines = [f"{'module':<{width}}  {'trainable':>12}  {'total':>12}"]
        lines += [f"{k:<{width}}  {t:>12,}  {a:>12,}" for k, (t, a) in rows.items()]
        lines.append(f"trainable params: {trainable:,} || all params: {total:,} || "
                     f"trainable%: {100 * trainable / max(total, 1):.4f}")
        return "\n".join(lines)

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _commute(slot_a: AdapterSlot, a: str, slot_b: AdapterSlot, b: str) -> bool:
    """Whether two adapters on one host merge and unmerge alike in either order: two plain updates
    (W += ΔW: LoRA) or two diagonal scalings (IA3). DoRA (``rescales_host``) commutes with nothing."""
    kinds = {slot_a.spec.kind, slot_b.spec.kind}
    if kinds == {"scale"}:
        return True
    return kinds == {"lora"} and not any(getattr(s.adapters[n], "rescales_host", False)
                                         for s, n in ((slot_a, a), (slot_b, b)))


def _adapter_name_of(key: str) -> str:
    return key.split(".adapters.", 1)[1].split(".", 1)[0]
