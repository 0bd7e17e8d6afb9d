"""DoRA: weight-decomposed LoRA (Liu et al. 2024), exactly as Hugging Face peft computes it.

The adapted weight is W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖_row: a learned magnitude m per
output row times the direction of the LoRA-updated weight. The host already computed
out = W x + bias, so the adapter returns

    out + (m/n - 1) ⊙ (W x) + (m/n) ⊙ s·B·A x,        n = ‖W + s·B·A‖_row (detached, as peft does)

i.e. bias + (m/n) ⊙ (W x + s·B·A x): only W x and the LoRA term are rescaled, never the bias.
B·A is never formed: per part p (rows i of W_p) the squared row norm is

    ‖W_i + s B_i A‖² = ‖W_i‖² + 2s B_i·(A W_iᵀ) + s² B_i (A Aᵀ) B_iᵀ,

from W_p A_pᵀ [size_p, r] and A_p A_pᵀ [r, r]. On a fused host covered part-wise (q and v of
``linear_qkv``) m covers the chosen rows only and the other parts pass through untouched.

The adapter reads the host weight through its block (``getattr(block, host)`` at call time),
held as a plain attribute: the block is neither registered as a submodule nor copied.

Stacked on one host (a LoRA or DoRA adapter running before it in the slot, unmerged): the host output
it rescales already holds their updates, so W above is the host weight with those updates folded in
(formed densely, only then). Its forward is then exactly what merging them in forward order gives, and
merging an earlier adapter alone leaves its output unchanged. (Hugging Face peft normalises W alone
there, so that merging changes its output.) Routed batches run each adapter on the bare host output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.peft.base import SlotContext, register
from nemo_peft.peft.lora import LoraAdapter, LoraPEFTConfig, check_mergeable


class DoraAdapter(LoraAdapter):
    """LoRA A/B per part (see ``LoraAdapter``) plus a magnitude vector over the covered rows."""

    rescales_host = True  # merging scales the host rows: order matters against other adapters there

    def __init__(self, block: nn.Module, host_name: str, in_features: int, out_slices: list[tuple[int, int]],
                 dim: int, alpha: float, dropout: float = 0.0, dropout_position: str = "pre",
                 a_init: str = "xavier", b_init: str = "zero", use_rslora: bool = False, preceding=()):
        super().__init__(in_features, out_slices, dim, alpha, dropout, dropout_position, a_init, b_init, use_rslora)
        object.__setattr__(self, "_block", block)  # not a submodule: no state, no recursion, no copy
        self.host_name = host_name
        # m starts at ‖W + s·B·A‖ (= ‖W‖ with B = 0, W holding the updates of the adapters that will
        # run before this one), so the model is unchanged at initialisation.
        self.magnitude = nn.Parameter(self.weight_norm(fold(self._host_weight(), preceding)).to(self.lora_a))
        # m / n of the last merge, to undo it exactly (not saved: merge state is not part of a checkpoint)
        self.register_buffer("merge_factor", None, persistent=False)

    @property
    def host(self) -> nn.Module:
        return getattr(self._block, self.host_name)

    def _host_weight(self) -> torch.Tensor:
        weight = getattr(self.host, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"DoRA needs the dense weight of its host {type(self.host).__name__}; "
                            "quantized (QLoRA) hosts are not supported.")
        return weight

    def preceding(self) -> list[nn.Module]:
        """The unmerged adapters that run before this one in its slot: their updates are in its input."""
        for spec in type(self._block).adapter_slots:
            slot = getattr(self._block, spec.name)
            if spec.host != self.host_name or not any(a is self for a in slot.adapters.values()):
                continue
            if slot.routing is not None:  # routed: every adapter sees the bare host output
                return []
            names = [n for n in slot.active if n not in slot.merged]  # merged ones are in the weight already
            mine = next((i for i, n in enumerate(names) if slot.adapters[n] is self), 0)
            return [slot.adapters[n] for n in names[:mine]]
        return []

    @torch.no_grad()
    def weight_norm(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """‖W + s·B·A‖ per covered row, in fp32, without forming B·A (detached, as in peft).

        W: ``weight`` if given, else the host weight with the preceding adapters folded in."""
        weight = fold(self._host_weight(), self.preceding()) if weight is None else weight
        s = self.scale
        norms = []
        for _, start, size, a, b in self.parts():
            w = weight[start:start + size].float()
            a, b = a.to(w.device, torch.float32), b.to(w.device, torch.float32)
            sq = w.pow(2).sum(1) + (2 * s) * (b * (w @ a.T)).sum(1) + (s * s) * ((b @ (a @ a.T)) * b).sum(1)
            norms.append(sq.clamp_min(0).sqrt())
        return torch.cat(norms)

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        x_lora = x
        if self.dropout is not None and self.dropout_position == "pre":
            x_lora = self.dropout(x)
        # peft: with dropout active the rescaled base term is W·dropout(x) (recomputed), else the host output
        recompute = x_lora is not x and self.training
        weight = self._host_weight()
        bias = getattr(self.host, "bias", None)
        h = F.linear(x_lora, self.lora_a) * self.scale
        factor = (self.magnitude / self.weight_norm().to(self.magnitude.dtype)).to(out.dtype)
        full = len(self.out_slices) == 1 and self.out_slices[0] == (0, out.shape[-1])
        for (p, start, size, _, b), f in zip(self.parts(), self._per_part(factor)):
            if recompute:
                base = F.linear(x_lora, weight[start:start + size])
            else:
                base = out[..., start:start + size]
                # its own tensor (not a view of out): the in-place add below must not touch what backward saved
                if bias is not None:
                    base = base - bias[start:start + size]
                elif not full:
                    base = base.clone()
            lora = self._post(F.linear(h[..., self.rank_slice(p)], b))
            delta = (f - 1) * base + f * lora
            if full:
                return out + delta
            out[..., start:start + size] += delta  # in place, as LoRA does (base is its own tensor)
        return out

    @torch.no_grad()
    def merge(self, host: nn.Module, sign: float = 1.0) -> None:
        """W ← m/n ⊙ (W + s·B·A) on the covered rows; sign=-1 restores W = W'·n/m − s·B·A.

        n is taken from the unmerged weight, as forward does, and m/n is kept for the unmerge, so the
        round trip is exact up to rounding (also if m changed meanwhile; A and B must not change).
        The adapters before it in the slot must be merged first (``AdapterMixin._merge`` sees to it)."""
        check_mergeable(host)
        if sign > 0:
            factor = (self.magnitude.double() / self.weight_norm(host.weight).double())
            self.merge_factor = factor
        else:
            if self.merge_factor is None:
                raise RuntimeError("This DoRA adapter is not merged; there is nothing to unmerge.")
            factor = self.merge_factor.double()
        for (start, size, delta), f in zip(self.delta_weight(), self._per_part(factor)):
            rows = host.weight[start:start + size]
            f = f[:, None]
            if sign > 0:
                new = f * (rows.double() + delta.double())
            else:
                new = rows.double() / f - delta.double()
            rows.copy_(new.to(rows.dtype))
        if sign < 0:
            self.merge_factor = None

    def _per_part(self, per_row: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A vector over the covered rows (magnitude, m/n) cut into one piece per part."""
        return per_row.split([size for _, size in self.out_slices])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", dora(host={self.host_name})"


@torch.no_grad()
def fold(weight: torch.Tensor, adapters) -> torch.Tensor:
    """``weight`` with the LoRA / DoRA ``adapters`` merged into it in order (a new fp32 tensor if any)."""
    if not adapters:
        return weight
    weight = weight.float().clone()
    for ad in adapters:
        factor = (ad.magnitude.float() / ad.weight_norm(weight)) if isinstance(ad, DoraAdapter) else None
        for i, (start, size, delta) in enumerate(ad.delta_weight()):
            rows = weight[start:start + size]
            rows += delta.to(rows.device)
            if factor is not None:
                rows *= ad._per_part(factor)[i][:, None]
    return weight


@register("dora", section="dora_tuning")
@dataclass
class DoraPEFTConfig(LoraPEFTConfig):
    """DoRA: LoRA's options (targets, dim, alpha, dropout, rank/alpha patterns, ...) plus a
    trainable magnitude per output row of every adapted module."""

    def make_adapter(self, ctx: SlotContext, slices: list[tuple[int, int]], dim: int, alpha: float) -> nn.Module:
        host, slot = getattr(ctx.block, ctx.spec.host), getattr(ctx.block, ctx.spec.name)
        return DoraAdapter(  # the slot's active adapters will run before it (add_adapter appends it)
            ctx.block, ctx.spec.host, host.in_features, slices, dim, alpha, self.dropout, self.dropout_position,
            self.lora_A_init_method, self.lora_B_init_method, self.use_rslora,
            preceding=[slot.adapters[n] for n in slot.active],
        )
