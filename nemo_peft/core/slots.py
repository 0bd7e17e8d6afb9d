"""Adapter slots: places inside a block where adapters can sit, declared as data.

A block lists its slots in the class attribute ``adapter_slots`` and calls
``add_adapter_slots(self)`` in ``__init__``. Each slot becomes an ``AdapterSlot``
child module that holds named adapters. A slot with no active adapter is skipped
by a single attribute check in the block's forward, so empty slots cost nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SlotSpec:
    """Where a slot sits. ``kind`` says which methods can fill it and how it is called:

    - ``"lora"``: parallel to the linear layer ``host``: adapter(x, out) -> out + update; ``out`` is the
      host's fresh output, which the adapter may update in place (LoRA adds inside its GEMM)
    - ``"scale"``: rescales an activation (IA3): adapter(h) -> h * s
    - ``"residual"``: a bottleneck after a sub-block: adapter(h) -> h + f(h)
    - ``"prompt"``: virtual token embeddings: adapter() -> [n, hidden]
    - ``"prefix"``: per-layer key/value prefixes: adapter() -> (k, v), each [kv_heads, n, head_dim]
    """

    name: str
    kind: str
    host: str | None = None


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


@dataclass
class SlotContext:
    """One slot of one block, as a PEFT config sees it when deciding what to build."""

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


class AdapterSlot(nn.Module):
    """Holds the named adapters of one slot and which of them are active."""

    def __init__(self, spec: SlotSpec):
        super().__init__()
        self.spec = spec
        self.adapters = nn.ModuleDict()
        self.active: tuple[str, ...] = ()  # empty -> the block skips this slot
        self.merged: set[str] = set()  # folded into the host weight: not run in forward
        self.routing: dict[str, torch.Tensor] | None = None  # per-sample rows, see AdapterMixin.route

    def add(self, name: str, adapter: nn.Module) -> None:
        if name in self.adapters:
            raise ValueError(
                f"Adapter {name!r} already exists in slot {self.spec.name!r}; "
                "pick another name or delete the adapter first."
            )
        self.adapters[name] = adapter

    def set_active(self, names) -> None:
        self.active = tuple(n for n in names if n in self.adapters and n not in self.merged)

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``lora`` slots take (input, host output); ``scale``/``residual`` slots take one tensor."""
        if self.routing is not None:
            return self._routed(x, out)
        if out is None:
            for name in self.active:
                x = self.adapters[name](x)
            return x
        for name in self.active:
            out = self.adapters[name](x, out)
        return out

    def _routed(self, x, out):
        """Each adapter runs only on the batch rows routed to it (mixed-adapter batches)."""
        result = (x if out is None else out).clone()
        for name, rows in self.routing.items():
            if name not in self.active or rows.numel() == 0:
                continue
            adapter = self.adapters[name]
            if out is None:
                result[rows] = adapter(x[rows])
            else:
                result[rows] = adapter(x[rows], out[rows])
        return result

    def extra_repr(self) -> str:
        return f"{self.spec.name}, active={list(self.active)}"


def add_adapter_slots(block: nn.Module) -> None:
    """Create one empty ``AdapterSlot`` child per spec in ``block.adapter_slots``."""
    for spec in type(block).adapter_slots:
        slot = AdapterSlot(spec)
        setattr(block, spec.name, slot)  # registered as a child module (state dict, named_modules)
        # ... and found by plain attribute lookup: a child module is otherwise reached through
        # nn.Module.__getattr__ (~0.8-1.5 us against ~0.08 here), paid by every slot check of every forward.
        # Assigning the attribute again goes through nn.Module.__setattr__, which drops this entry (replace a
        # slot that way, not with add_module, which would leave the old one here).
        block.__dict__[spec.name] = slot


def host_parts(block: nn.Module, host: str) -> dict[str, tuple[int, int]]:
    """The named output parts of a (possibly fused) host linear: {part: (offset, size)}.

    Blocks with fused linears declare ``output_parts``; a plain linear is one part.
    """
    parts = getattr(block, "output_parts", {}).get(host)
    if parts:
        return dict(parts)
    return {"all": (0, getattr(block, host).out_features)}
