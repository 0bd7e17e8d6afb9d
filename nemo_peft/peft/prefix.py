"""Prefix tuning (P-tuning v2 style): learned key/value prefixes in every attention layer.

Each selected attention's ``prefix`` slot gets keys and values [kv_heads, n, head_dim]
that every query attends to (they are not rotated by RoPE and hold no position).
With ``prefix_projection`` they are produced per layer by an MLP
(embedding [n, hidden] -> Linear(hidden, encoder_hidden_size) -> tanh ->
Linear(encoder_hidden_size, 2 * kv_heads * head_dim)), which often trains more stably.

Prefixes start small and random (std 0.02), so the model is NOT unchanged at
initialisation (expected for prefix methods).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nemo_peft.peft.base import PEFTConfig, SlotContext, check_flag, check_layer_selection, check_number, register


class PrefixKV(nn.Module):
    """adapter() -> (keys, values), each [kv_heads, num_virtual_tokens, head_dim]."""

    def __init__(self, num_virtual_tokens: int, kv_heads: int, head_dim: int, hidden: int,
                 projection: bool, encoder_hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.shape = (num_virtual_tokens, kv_heads, head_dim)
        self.projection = projection
        if projection:
            self.embedding = nn.Parameter(torch.randn(num_virtual_tokens, hidden) * init_std)
            self.mlp = nn.Sequential(nn.Linear(hidden, encoder_hidden_size), nn.Tanh(),
                                     nn.Linear(encoder_hidden_size, 2 * kv_heads * head_dim))
        else:
            self.key = nn.Parameter(torch.randn(kv_heads, num_virtual_tokens, head_dim) * init_std)
            self.value = nn.Parameter(torch.randn(kv_heads, num_virtual_tokens, head_dim) * init_std)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.projection:
            return self.key, self.value
        n, kv_heads, head_dim = self.shape
        kv = self.mlp(self.embedding).view(n, 2, kv_heads, head_dim).permute(1, 2, 0, 3)
        return kv[0], kv[1]

    def extra_repr(self) -> str:
        n, kv_heads, head_dim = self.shape
        return f"num_virtual_tokens={n}, kv_heads={kv_heads}, head_dim={head_dim}, projection={self.projection}"


@register("prefix_tuning", section="prefix_tuning")
@dataclass
class PrefixTuningPEFTConfig(PEFTConfig):
    num_virtual_tokens: int = 10
    prefix_projection: bool = False  # reparameterise each layer's prefix through an MLP
    encoder_hidden_size: int = 512  # the MLP's hidden size (with prefix_projection)
    layer_selection: list[int] | None = None  # 1-based layer numbers; None = all layers

    aliases = {"virtual_tokens": "num_virtual_tokens"}

    def __post_init__(self):
        check_number(self, "num_virtual_tokens", integer=True, at_least=1)
        check_flag(self, "prefix_projection")
        if self.prefix_projection:  # the MLP's width; unused without the projection
            check_number(self, "encoder_hidden_size", integer=True, at_least=1)
        check_layer_selection(self)

    def build_adapters(self, slots: list[SlotContext]):
        built = {}
        for ctx in slots:
            if ctx.spec.kind != "prefix" or not self.in_layer_selection(ctx):
                continue
            attn = ctx.block
            built[ctx.key] = PrefixKV(self.num_virtual_tokens, attn.num_kv_heads, attn.head_dim,
                                      attn.linear_qkv.in_features, self.prefix_projection,
                                      self.encoder_hidden_size)
        if not built:
            raise ValueError(f"Prefix tuning found no attention layer with layer_selection={self.layer_selection} "
                             "(layer numbers are 1-based).")
        return built
