"""Self-attention with a fused QKV projection, GQA, RoPE, SDPA and a KV cache."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.core.slots import SlotSpec, add_adapter_slots
from nemo_peft.modules.rope import apply_rotary


class SelfAttention(nn.Module):
    """``linear_qkv`` packs [all q heads | all k heads | all v heads] along its output.

    This simple (non-interleaved) layout makes the q/k/v parts contiguous slices,
    so LoRA on ``q_proj`` alone is a LoRA on one slice, and HF conversion is a concat.
    """

    adapter_slots = (
        SlotSpec("lora_qkv", "lora", "linear_qkv"),
        SlotSpec("lora_proj", "lora", "linear_proj"),
        SlotSpec("ia3_key", "scale", "linear_qkv"),  # scales the k part of linear_qkv's output
        SlotSpec("ia3_value", "scale", "linear_qkv"),  # scales the v part
        SlotSpec("prefix", "prefix"),  # learned key/value prefixes (prefix tuning / P-tuning v2)
    )

    def __init__(self, hidden_size, num_heads, num_kv_heads, head_dim, qkv_bias, proj_bias, layer_index):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({num_heads}) must be a multiple of num_query_groups ({num_kv_heads})."
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_index = layer_index
        q, kv = num_heads * head_dim, num_kv_heads * head_dim
        self.linear_qkv = nn.Linear(hidden_size, q + 2 * kv, bias=qkv_bias)
        self.linear_proj = nn.Linear(q, hidden_size, bias=proj_bias)
        self.output_parts = {"linear_qkv": {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}}
        add_adapter_slots(self)

    def forward(self, x, rope=None, attn_mask=None, kv_cache=None):
        b, t, _ = x.shape
        qkv = self.linear_qkv(x)
        if self.lora_qkv.active:
            qkv = self.lora_qkv(x, qkv)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        if self.ia3_key.active:
            k = self.ia3_key(k)
        if self.ia3_value.active:
            v = self.ia3_value(v)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        if self.prefix.active:
            k, v, attn_mask = self._prepend_prefix(k, v, attn_mask, t)
        # No explicit mask and several queries: plain causal attention (fast kernels).
        causal = attn_mask is None and t > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=causal,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        y = y.transpose(1, 2).reshape(b, t, q_size)
        out = self.linear_proj(y)
        if self.lora_proj.active:
            out = self.lora_proj(y, out)
        return out

    def _prepend_prefix(self, k, v, attn_mask, t):
        """Put every active adapter's key/value prefix in front; prefixes are always visible."""
        if self.prefix.routing is not None:
            raise ValueError("Prefix tuning adapters cannot be routed per sample; run them in their own batch.")
        b, s = k.shape[0], k.shape[2]
        pk, pv = zip(*(self.prefix.adapters[n]() for n in self.prefix.active))
        pk = torch.cat(pk, dim=1).to(k.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        pv = torch.cat(pv, dim=1).to(v.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        n = pk.shape[2]
        if attn_mask is None:  # causal, aligned to the last query: key j is seen by query i iff j <= i + s - t
            q_pos = torch.arange(t, device=k.device)[:, None] + (s - t)
            attn_mask = (torch.arange(s, device=k.device)[None, :] <= q_pos)[None, None]
        attn_mask = torch.cat([attn_mask.new_ones(*attn_mask.shape[:-1], n).expand(attn_mask.shape[0], 1, t, n),
                               attn_mask.expand(attn_mask.shape[0], 1, t, s)], dim=-1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), attn_mask
