"""IA3: learned vectors that rescale keys, values and the MLP's intermediate activation.

Initialised to ones (the model is unchanged at init). Mergeable: a key/value scale
multiplies the k/v rows of ``linear_qkv``; the MLP scale multiplies the input
columns of ``linear_fc2``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nemo_peft.core.slots import host_parts
from nemo_peft.peft.base import PEFTConfig, SlotContext, check_layer_selection, register

# target name (ours, NeMo-ish and Hugging Face) -> slot
IA3_TARGETS = {"key": "ia3_key", "value": "ia3_value", "mlp": "ia3_mlp",
               "k_proj": "ia3_key", "v_proj": "ia3_value", "down_proj": "ia3_mlp",
               "k": "ia3_key", "v": "ia3_value", "wo": "ia3_mlp",  # T5 (peft's IA3 default for T5)
               "ia3_key": "ia3_key", "ia3_value": "ia3_value", "ia3_mlp": "ia3_mlp"}


class IA3Scaler(nn.Module):
    """h * s. ``rows`` (start, size): merge scales those output rows of the host;
    ``rows=None``: merge scales the host's input columns."""

    def __init__(self, size: int, rows: tuple[int, int] | None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size))
        self.rows = rows

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale

    @torch.no_grad()
    def merge(self, host: nn.Linear, sign: float = 1.0) -> None:
        s = self.scale.float() if sign > 0 else 1.0 / self.scale.float()
        if self.rows is None:
            host.weight.copy_((host.weight.float() * s[None, :]).to(host.weight.dtype))
            return
        start, size = self.rows
        w = host.weight[start:start + size]
        w.copy_((w.float() * s[:, None]).to(w.dtype))
        if host.bias is not None:
            b = host.bias[start:start + size]
            b.copy_((b.float() * s).to(b.dtype))


@register("ia3", section="ia3_tuning")
@dataclass
class IA3PEFTConfig(PEFTConfig):
    target_modules: list[str] = field(default_factory=lambda: ["key", "value", "mlp"])
    layer_selection: list[int] | None = None  # 1-based layer numbers; None = all layers

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        unknown = [t for t in self.target_modules if t not in IA3_TARGETS]
        if unknown or not self.target_modules:
            raise ValueError(f"IA3 target_modules {unknown or '[]'} are not valid; choose from {sorted(IA3_TARGETS)}.")
        check_layer_selection(self)

    def build_adapters(self, slots: list[SlotContext]):
        wanted = {IA3_TARGETS[t] for t in self.target_modules}
        built = {}
        for ctx in slots:
            if ctx.spec.kind != "scale" or ctx.spec.name not in wanted or not self.in_layer_selection(ctx):
                continue
            if ctx.spec.name == "ia3_mlp":
                built[ctx.key] = IA3Scaler(getattr(ctx.block, ctx.spec.host).in_features, rows=None)
            else:
                part = host_parts(ctx.block, ctx.spec.host)["k" if ctx.spec.name == "ia3_key" else "v"]
                built[ctx.key] = IA3Scaler(part[1], rows=part)
        if not built:
            raise ValueError(f"IA3 found no slot for {self.target_modules} with layer_selection="
                             f"{self.layer_selection} (layer numbers are 1-based).")
        return built
