"""Per-sample adapter routing and adapter deletion for models with ``AdapterMixin``.

``route(model, names)`` serves a mixed batch without training: row i of the batch
runs the base model plus only adapter ``names[i]`` (``None`` or ``"__base__"``: the
base model alone). It sets ``AdapterSlot.routing`` = {name: rows} on every slot and
activates the routed names in the slots for the duration; ``AdapterSlot._routed``
then runs each adapter on its own rows only. Everything is restored on exit, also
after an exception.
"""
from __future__ import annotations

import contextlib

import torch

BASE = "__base__"  # routing name for "no adapter" (as is None)
_UNROUTABLE_KINDS = ("prompt", "prefix")  # they change the sequence, not single rows


def routing_rows(model, adapter_names) -> tuple[dict[str, list[int]], int]:
    """Validate one name per batch row; return ({adapter name: [row indices]}, batch size)."""
    if isinstance(adapter_names, (str, bytes)) or not hasattr(adapter_names, "__iter__"):
        raise TypeError("route() takes a list with one adapter name (or None / '__base__') per batch row, "
                        f"got {type(adapter_names).__name__}.")
    names = list(adapter_names)
    if not names:
        raise ValueError("route() needs one adapter name per batch row; got an empty list.")
    rows: dict[str, list[int]] = {}
    bad = []
    for i, n in enumerate(names):
        if n is None or n == BASE:
            continue
        if not isinstance(n, str) or n not in model.adapter_names:
            bad.append(n)
            continue
        rows.setdefault(n, []).append(i)
    if bad:
        raise ValueError(f"Unknown adapter(s) {sorted(set(map(str, bad)))} in route(); this model has "
                         f"{model.adapter_names} (use None or {BASE!r} for the base model).")
    return rows, len(names)


@contextlib.contextmanager
def route(model, adapter_names):
    rows, batch = routing_rows(model, adapter_names)
    if model.merged_adapters:
        raise RuntimeError(f"Adapter(s) {model.merged_adapters} are merged into the base weights, so they would "
                           "apply to every row; call unmerge_adapters() before routing per sample.")
    slots = model.adapter_slots_by_path()
    for path, slot in slots.items():
        routed_here = [n for n in rows if n in slot.adapters]
        if routed_here and slot.spec.kind in _UNROUTABLE_KINDS:
            raise ValueError(f"Adapter {routed_here[0]!r} has a {slot.spec.kind} adapter at {path}; virtual-token "
                             "and prefix adapters cannot be routed per sample, run them in their own batch.")
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    row_tensors = {n: torch.tensor(r, dtype=torch.long, device=device) for n, r in rows.items()}

    def check_batch(_module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None and ids.shape[0] != batch:
            raise ValueError(f"route() was given {batch} adapter names but the batch has {ids.shape[0]} rows; "
                             "pass one name per row.")

    saved = {path: (slot.routing, slot.active) for path, slot in slots.items()}
    hook = model.register_forward_pre_hook(check_batch, with_kwargs=True)
    try:
        for slot in slots.values():
            here = {n: r for n, r in row_tensors.items() if n in slot.adapters}
            slot.routing = here
            slot.set_active(list(here))
        yield model
    finally:
        hook.remove()
        for path, slot in slots.items():
            routing, active = saved[path]
            slot.routing = routing
            slot.active = tuple(n for n in active if n in slot.adapters)


def delete_adapter(model, name: str) -> None:
    """Remove adapter ``name`` from every slot, the configs and the active list."""
    if name not in model.adapter_names:
        raise ValueError(f"Unknown adapter {name!r}; this model has {model.adapter_names}.")
    if name in model.merged_adapters:
        raise RuntimeError(f"Adapter {name!r} is merged into the base weights; call "
                           f"unmerge_adapters({name!r}) before deleting it.")
    for slot in model.adapter_slots_by_path().values():
        if name in slot.adapters:
            del slot.adapters[name]
        if slot.routing is not None:
            slot.routing.pop(name, None)
        slot.active = tuple(n for n in slot.active if n != name)
    del model._adapter_configs[name]
    model._base_fingerprints.pop(name, None)
    model._active_adapters = [n for n in model.active_adapters if n != name]
