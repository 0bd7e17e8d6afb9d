"""Self-attention with a fused QKV projection, GQA, RoPE, SDPA and a KV cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.core.slots import add_adapter_slots
from nemo_peft.modules.attention_parts import FUSED_QKV_SLOTS, fused_qkv, prepend_prefix, project_out
from nemo_peft.modules.linear import Linear


class SelfAttention(nn.Module):
    """``linear_qkv`` packs [all q heads | all k heads | all v heads] along its output.

    This simple (non-interleaved) layout makes the q/k/v parts contiguous slices,
    so LoRA on ``q_proj`` alone is a LoRA on one slice, and HF conversion is a concat.
    """

    adapter_slots = FUSED_QKV_SLOTS

    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, proj_bias, layer_index):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({num_heads}) must be a multiple of num_query_groups ({num_kv_heads})."
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_index = layer_index
        q, kv = num_heads * head_dim, num_kv_heads * head_dim
        self.linear_qkv = Linear(hidden_size, q + 2 * kv, bias=qkv_bias)
        self.linear_proj = Linear(q, hidden_size, bias=proj_bias)
        self.output_parts = {"linear_qkv": {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}}
        add_adapter_slots(self)

    def forward(self, x, rope=None, attn_mask=None, kv_cache=None):
        t = x.shape[1]
        q, k, v = fused_qkv(self, x, rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        if self.prefix.active:
            if attn_mask is None:  # causal, aligned to the last query: key j is seen by query i iff j <= i + s - t
                s = k.shape[2]
                q_pos = torch.arange(t, device=k.device)[:, None] + (s - t)
                attn_mask = (torch.arange(s, device=k.device)[None, :] <= q_pos)[None, None]
            k, v, attn_mask = prepend_prefix(self.prefix, k, v, attn_mask, additive=False)
        # No explicit mask and several queries: plain causal attention (fast kernels).
        causal = attn_mask is None and t > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return project_out(self, y)
