"""Bottleneck (Houlsby) adapters: a residual bottleneck after attention and after the MLP.

h -> h + dropout(W_out · act(W_in · norm(h))); ``W_out`` starts at zero (NeMo's
``row_init_method: zero``), so the model is unchanged at initialisation.

NeMo calls these "canonical adapters": scheme ``adapter``, section ``adapter_tuning``,
config ``CanonicalAdaptersPEFTConfig`` (kept as an alias). Saved adapters record ``adapter``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.modules.norm import RMSNorm
from nemo_peft.peft.base import (PEFTConfig, SlotContext, check_choice, check_layer_selection, check_number,
                                  option_error, register)
from nemo_peft.peft.lora import INIT_METHODS, init_tensor

ACTIVATIONS = {"swish": F.silu, "silu": F.silu, "gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh,
               "identity": lambda x: x}
NORM_TYPES = {"layernorm": "layernorm", "mixedfusedlayernorm": "layernorm", "rmsnorm": "rmsnorm"}
SLOTS = {"adapter_post_attn": "adapter_post_attn", "adapter_post_mlp": "adapter_post_mlp",
         "attention": "adapter_post_attn", "mlp": "adapter_post_mlp"}


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, dim: int, activation: str, norm_position: str, norm_type: str,
                 dropout: float, column_init: str, row_init: str):
        super().__init__()
        self.norm = None
        if norm_position != "none":
            self.norm = nn.LayerNorm(hidden) if norm_type == "layernorm" else RMSNorm(hidden)
        self.norm_position = norm_position
        self.linear_in = nn.Linear(hidden, dim, bias=False)
        self.linear_out = nn.Linear(dim, hidden, bias=False)
        init_tensor(self.linear_in.weight.data, column_init)
        init_tensor(self.linear_out.weight.data, row_init)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.norm(h) if self.norm_position == "pre" else h
        y = self.linear_out(self.act(self.linear_in(x)))
        if self.norm_position == "post":
            y = self.norm(y)
        if self.dropout is not None:
            y = self.dropout(y)
        return h + y


@register("adapter", section="adapter_tuning")
@dataclass
class BottleneckAdapterPEFTConfig(PEFTConfig):
    """NeMo's ``adapter_tuning`` options."""

    adapter_dim: int = 32
    adapter_dropout: float = 0.0
    activation: str = "swish"
    norm_position: str = "pre"  # pre | post | none
    norm_type: str = "mixedfusedlayernorm"  # layernorm (mixedfusedlayernorm) | rmsnorm
    column_init_method: str = "xavier"
    row_init_method: str = "zero"
    target_modules: list[str] = field(default_factory=lambda: ["adapter_post_attn", "adapter_post_mlp"])
    layer_selection: list[int] | None = None

    def __post_init__(self):
        for name, valid in (("activation", ACTIVATIONS), ("norm_position", ("pre", "post", "none")),
                            ("norm_type", NORM_TYPES), ("column_init_method", INIT_METHODS),
                            ("row_init_method", INIT_METHODS)):
            check_choice(self, name, valid)
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        unknown = [t for t in self.target_modules if t not in SLOTS]
        if unknown or not self.target_modules:
            raise option_error(self, "target_modules", f"{unknown or '[]'} are not valid; choose from {sorted(SLOTS)}")
        check_number(self, "adapter_dim", integer=True, at_least=1)
        check_number(self, "adapter_dropout", at_least=0, below=1)
        check_layer_selection(self)

    def build_adapters(self, slots: list[SlotContext]):
        wanted = {SLOTS[t] for t in self.target_modules}
        built = {}
        for ctx in slots:
            if ctx.spec.kind == "residual" and ctx.spec.name in wanted and self.in_layer_selection(ctx):
                hidden = ctx.block.input_layernorm.weight.shape[0]
                built[ctx.key] = BottleneckAdapter(hidden, self.adapter_dim, self.activation, self.norm_position,
                                                   NORM_TYPES[self.norm_type], self.adapter_dropout,
                                                   self.column_init_method, self.row_init_method)
        if not built:
            raise ValueError(f"Bottleneck adapters found no slot (layer_selection={self.layer_selection}, "
                             "1-based layer numbers).")
        return built


CanonicalAdaptersPEFTConfig = BottleneckAdapterPEFTConfig  # NeMo's name
