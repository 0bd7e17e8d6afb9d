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

    def __init__(self, block: nn.Module, host_name: str, in_features: int, out_slices: list[tuple[int, int]],
                 dim: int, alpha: float, dropout: float = 0.0, dropout_position: str = "pre",
                 a_init: str = "xavier", b_init: str = "zero", use_rslora: bool = False):
        super().__init__(in_features, out_slices, dim, alpha, dropout, dropout_position, a_init, b_init, use_rslora)
        object.__setattr__(self, "_block", block)  # not a submodule: no state, no recursion, no copy
        self.host_name = host_name
        # m starts at ‖W + s·B·A‖ (= ‖W‖ with B = 0), so the model is unchanged at initialisation.
        self.magnitude = nn.Parameter(self.weight_norm().to(self.lora_a))
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

    @torch.no_grad()
    def weight_norm(self) -> torch.Tensor:
        """‖W + s·B·A‖ per covered row, in fp32, without forming B·A (detached, as in peft)."""
        weight, s = self._host_weight(), self.scale
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
        round trip is exact up to rounding (also if m changed meanwhile; A and B must not change)."""
        check_mergeable(host)
        if sign > 0:
            factor = (self.magnitude.double() / self.weight_norm().double())
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


@register("dora", section="dora_tuning")
@dataclass
class DoraPEFTConfig(LoraPEFTConfig):
    """DoRA: LoRA's options (targets, dim, alpha, dropout, rank/alpha patterns, ...) plus a
    trainable magnitude per output row of every adapted module."""

    def make_adapter(self, ctx: SlotContext, slices: list[tuple[int, int]], dim: int, alpha: float) -> nn.Module:
        host = getattr(ctx.block, ctx.spec.host)
        return DoraAdapter(
            ctx.block, ctx.spec.host, host.in_features, slices, dim, alpha, self.dropout, self.dropout_position,
            self.lora_A_init_method, self.lora_B_init_method, self.use_rslora,
        )
