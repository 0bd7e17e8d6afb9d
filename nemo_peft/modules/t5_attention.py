"""T5 attention: a learned relative position bias and no 1/sqrt(d) scaling of the scores.

Weights follow our Megatron-ish names so adapter targets carry over from GPT:
self-attention packs [q | k | v] in ``linear_qkv`` (the same adapter slots as GPT's);
cross-attention has ``linear_q`` (on the decoder stream) and a fused ``linear_kv`` [k | v]
(on the encoder output); ``linear_proj`` is the output projection. Each block's
``init_weights(cfg)`` applies transformers' T5 init scheme.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.core.slots import SlotSpec, add_adapter_slots
from nemo_peft.modules.attention_parts import (FUSED_QKV_SLOTS, adapted_linear, fused_qkv, prepend_prefix,
                                               project_out, scale_kv, split_heads)
from nemo_peft.modules.linear import Linear


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Mesh TensorFlow's bucketing of ``key_pos - query_pos`` (as transformers' T5): half
    of the buckets are exact small distances, the rest logarithmic up to ``max_distance``."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * num_buckets
        relative_position = relative_position.abs()
    else:
        relative_position = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (
        torch.log(relative_position.float() / max_exact) / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, relative_position, large)


class RelativePositionBias(nn.Module):
    """The learned per-head bias of a stack (transformers keeps it in layer 0); it is
    computed once per forward and shared by every layer of the stack."""

    def __init__(self, num_buckets: int, max_distance: int, num_heads: int, bidirectional: bool):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.relative_attention_bias = nn.Embedding(num_buckets, num_heads)

    def forward(self, q_len: int, k_len: int, past: int = 0) -> torch.Tensor:
        """[1, heads, q_len, k_len]; queries sit at positions past..past+q_len-1."""
        device = self.relative_attention_bias.weight.device
        q_pos = torch.arange(past, past + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(k_pos - q_pos, self.bidirectional, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    @torch.no_grad()
    def init_weights(self, cfg) -> None:
        nn.init.normal_(self.relative_attention_bias.weight, std=cfg.d_model ** -0.5)


class T5SelfAttention(nn.Module):
    """Self-attention over a fused ``linear_qkv`` [q | k | v]; the scores get the stack's
    additive bias (relative positions plus masking) and are NOT scaled by 1/sqrt(d)."""

    adapter_slots = FUSED_QKV_SLOTS

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, layer_index: int):
        super().__init__()
        self.num_heads = self.num_kv_heads = num_heads
        self.head_dim, self.layer_index = head_dim, layer_index
        inner = num_heads * head_dim
        self.linear_qkv = Linear(hidden_size, 3 * inner, bias=False)
        self.linear_proj = Linear(inner, hidden_size, bias=False)
        self.output_parts = {"linear_qkv": {"q": (0, inner), "k": (inner, inner), "v": (2 * inner, inner)}}
        add_adapter_slots(self)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """``bias`` [1 or B, heads, T, past+T] is added to the scores (masked keys hold a huge negative)."""
        q, k, v = fused_qkv(self, x)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        if self.prefix.active:  # no position bias for the prefixes
            k, v, bias = prepend_prefix(self.prefix, k, v, bias, additive=True)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return project_out(self, y)

    @torch.no_grad()
    def init_weights(self, cfg) -> None:
        """transformers' T5 init: no 1/sqrt(d) in the scores, so the queries start smaller."""
        d, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
        nn.init.normal_(self.linear_qkv.weight[:inner], std=(d * cfg.d_kv) ** -0.5)
        nn.init.normal_(self.linear_qkv.weight[inner:], std=d ** -0.5)
        nn.init.normal_(self.linear_proj.weight, std=inner ** -0.5)


class T5CrossAttention(nn.Module):
    """Decoder-to-encoder attention: ``linear_q`` on the decoder stream, a fused ``linear_kv``
    [k | v] on the encoder output (computed once per generation when a cache is given)."""

    adapter_slots = (
        SlotSpec("lora_q", "lora", "linear_q"),
        SlotSpec("lora_kv", "lora", "linear_kv"),
        SlotSpec("lora_proj", "lora", "linear_proj"),
        SlotSpec("ia3_key", "scale", "linear_kv"),  # scales the k part of linear_kv's output
        SlotSpec("ia3_value", "scale", "linear_kv"),  # scales the v part
    )

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, layer_index: int):
        super().__init__()
        self.num_heads = self.num_kv_heads = num_heads
        self.head_dim, self.layer_index = head_dim, layer_index
        inner = num_heads * head_dim
        self.linear_q = Linear(hidden_size, inner, bias=False)
        self.linear_kv = Linear(hidden_size, 2 * inner, bias=False)
        self.linear_proj = Linear(inner, hidden_size, bias=False)
        self.output_parts = {"linear_kv": {"k": (0, inner), "v": (inner, inner)}}
        add_adapter_slots(self)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output, each [B, heads, S, head_dim]."""
        inner = self.num_heads * self.head_dim
        k, v = adapted_linear(self.linear_kv, self.lora_kv, memory).split([inner, inner], dim=-1)
        k, v = scale_kv(self, k, v)
        return split_heads(k, self.num_heads, self.head_dim), split_heads(v, self.num_heads, self.head_dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None = None,
                kv_cache=None) -> torch.Tensor:
        """``mask``: additive [B, 1, 1, S] over the encoder positions, or None (no padding)."""
        q = split_heads(adapted_linear(self.linear_q, self.lora_q, x), self.num_heads, self.head_dim)
        if kv_cache is not None:
            k, v = kv_cache.cross_kv(self.layer_index, self, memory)
        else:
            if memory is None:
                raise ValueError("Cross-attention needs the encoder output (encoder_outputs) when no cache holds it.")
            k, v = self.memory_kv(memory)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return project_out(self, y)

    @torch.no_grad()
    def init_weights(self, cfg) -> None:
        """transformers' T5 init (as the self-attention's)."""
        d, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
        nn.init.normal_(self.linear_q.weight, std=(d * cfg.d_kv) ** -0.5)
        nn.init.normal_(self.linear_kv.weight, std=d ** -0.5)
        nn.init.normal_(self.linear_proj.weight, std=inner ** -0.5)
