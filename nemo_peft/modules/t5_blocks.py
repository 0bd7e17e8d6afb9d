"""T5 building blocks: attention with a relative position bias and no 1/sqrt(d) scaling,
cross-attention, the encoder/decoder layer and stack, and the decoder's KV cache.

Weights follow our Megatron-ish names so adapter targets carry over from GPT:
self-attention packs [q | k | v] in ``linear_qkv``; cross-attention has ``linear_q``
(on the decoder stream) and a fused ``linear_kv`` [k | v] (on the encoder output);
``linear_proj`` is the output projection. The feed-forward block is the shared ``MLP``
(``linear_fc1`` = wi, or [wi_0 | wi_1] as [gate | up] when gated; ``linear_fc2`` = wo)
and the norms are ``RMSNorm`` (T5's LayerNorm: no mean, no bias).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nemo_peft.core.slots import SlotSpec, add_adapter_slots
from nemo_peft.modules.kv_cache import KVCache
from nemo_peft.modules.mlp import MLP
from nemo_peft.modules.norm import RMSNorm


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


class T5SelfAttention(nn.Module):
    """Self-attention over a fused ``linear_qkv`` [q | k | v]; the scores get the stack's
    additive bias (relative positions plus masking) and are NOT scaled by 1/sqrt(d)."""

    adapter_slots = (
        SlotSpec("lora_qkv", "lora", "linear_qkv"),
        SlotSpec("lora_proj", "lora", "linear_proj"),
        SlotSpec("ia3_key", "scale", "linear_qkv"),  # scales the k part of linear_qkv's output
        SlotSpec("ia3_value", "scale", "linear_qkv"),  # scales the v part
        SlotSpec("prefix", "prefix"),  # learned key/value prefixes (prefix tuning / P-tuning v2)
    )

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int, layer_index: int):
        super().__init__()
        self.num_heads = self.num_kv_heads = num_heads
        self.head_dim, self.layer_index = head_dim, layer_index
        inner = num_heads * head_dim
        self.linear_qkv = nn.Linear(hidden_size, 3 * inner, bias=False)
        self.linear_proj = nn.Linear(inner, hidden_size, bias=False)
        self.output_parts = {"linear_qkv": {"q": (0, inner), "k": (inner, inner), "v": (2 * inner, inner)}}
        add_adapter_slots(self)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """``bias`` [1 or B, heads, T, past+T] is added to the scores (masked keys hold a huge negative)."""
        b, t, _ = x.shape
        inner = self.num_heads * self.head_dim
        qkv = self.linear_qkv(x)
        if self.lora_qkv.active:
            qkv = self.lora_qkv(x, qkv)
        q, k, v = qkv.split([inner, inner, inner], dim=-1)
        if self.ia3_key.active:
            k = self.ia3_key(k)
        if self.ia3_value.active:
            v = self.ia3_value(v)
        q, k, v = (z.view(b, t, self.num_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)
        if self.prefix.active:
            k, v, bias = self._prepend_prefix(k, v, bias)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        y = y.transpose(1, 2).reshape(b, t, inner)
        out = self.linear_proj(y)
        if self.lora_proj.active:
            out = self.lora_proj(y, out)
        return out

    def _prepend_prefix(self, k, v, bias):
        """Every active adapter's key/value prefix goes in front: always visible, no position bias."""
        if self.prefix.routing is not None:
            raise ValueError("Prefix tuning adapters cannot be routed per sample; run them in their own batch.")
        b = k.shape[0]
        pk, pv = zip(*(self.prefix.adapters[n]() for n in self.prefix.active))
        pk = torch.cat(pk, dim=1).to(k.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        pv = torch.cat(pv, dim=1).to(v.dtype).unsqueeze(0).expand(b, -1, -1, -1)
        bias = torch.cat([bias.new_zeros(*bias.shape[:-1], pk.shape[2]), bias], dim=-1)
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), bias


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
        self.linear_q = nn.Linear(hidden_size, inner, bias=False)
        self.linear_kv = nn.Linear(hidden_size, 2 * inner, bias=False)
        self.linear_proj = nn.Linear(inner, hidden_size, bias=False)
        self.output_parts = {"linear_kv": {"k": (0, inner), "v": (inner, inner)}}
        add_adapter_slots(self)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the encoder output, each [B, heads, S, head_dim]."""
        b, s, _ = memory.shape
        inner = self.num_heads * self.head_dim
        kv = self.linear_kv(memory)
        if self.lora_kv.active:
            kv = self.lora_kv(memory, kv)
        k, v = kv.split([inner, inner], dim=-1)
        if self.ia3_key.active:
            k = self.ia3_key(k)
        if self.ia3_value.active:
            v = self.ia3_value(v)
        return (k.view(b, s, self.num_heads, self.head_dim).transpose(1, 2),
                v.view(b, s, self.num_heads, self.head_dim).transpose(1, 2))

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None = None,
                kv_cache=None) -> torch.Tensor:
        """``mask``: additive [B, 1, 1, S] over the encoder positions, or None (no padding)."""
        b, t, _ = x.shape
        inner = self.num_heads * self.head_dim
        q = self.linear_q(x)
        if self.lora_q.active:
            q = self.lora_q(x, q)
        q = q.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.cross_kv(self.layer_index, self, memory)
        else:
            if memory is None:
                raise ValueError("Cross-attention needs the encoder output (encoder_outputs) when no cache holds it.")
            k, v = self.memory_kv(memory)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        y = y.transpose(1, 2).reshape(b, t, inner)
        out = self.linear_proj(y)
        if self.lora_proj.active:
            out = self.lora_proj(y, out)
        return out


class T5Layer(nn.Module):
    """A pre-norm T5 block: self-attention, (decoder only) cross-attention, feed-forward."""

    adapter_slots = (
        SlotSpec("adapter_post_attn", "residual"),  # Houlsby bottleneck on the self-attention output
        SlotSpec("adapter_post_mlp", "residual"),  # ... and on the feed-forward output
    )

    def __init__(self, cfg, layer_index: int, is_decoder: bool):
        super().__init__()
        d, eps = cfg.d_model, cfg.layer_norm_epsilon
        self.input_layernorm = RMSNorm(d, eps)
        self.self_attention = T5SelfAttention(d, cfg.num_heads, cfg.d_kv, layer_index)
        self.pre_cross_attn_layernorm = RMSNorm(d, eps) if is_decoder else None
        self.cross_attention = T5CrossAttention(d, cfg.num_heads, cfg.d_kv, layer_index) if is_decoder else None
        self.pre_mlp_layernorm = RMSNorm(d, eps)
        self.mlp = MLP(d, cfg.d_ff, cfg.activation, cfg.gated, bias=False)
        add_adapter_slots(self)

    def forward(self, x, bias, memory=None, memory_mask=None, kv_cache=None):
        a = self.self_attention(self.input_layernorm(x), bias, kv_cache)
        if self.adapter_post_attn.active:
            a = self.adapter_post_attn(a)
        x = x + a
        if self.cross_attention is not None:
            x = x + self.cross_attention(self.pre_cross_attn_layernorm(x), memory, memory_mask, kv_cache)
        m = self.mlp(self.pre_mlp_layernorm(x))
        if self.adapter_post_mlp.active:
            m = self.adapter_post_mlp(m)
        return x + m


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention): the shared
    relative position bias, the layers and the final norm."""

    def __init__(self, cfg, num_layers: int, is_decoder: bool):
        super().__init__()
        self.is_decoder = is_decoder
        self.position_bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                                  bidirectional=not is_decoder)
        self.layers = nn.ModuleList(T5Layer(cfg, i, is_decoder) for i in range(num_layers))
        self.final_layernorm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.activation_checkpointing = False

    def forward(self, x, padding_mask=None, memory=None, memory_mask=None, kv_cache=None):
        """``padding_mask`` [B, past+T] marks this stack's real tokens (1) and padding (0);
        ``memory_mask`` [B, S] does the same for the encoder output the decoder attends to."""
        t = x.shape[1]
        past = kv_cache.length if kv_cache is not None else 0
        bias = self.attention_bias(padding_mask, t, past, x.dtype)
        cross_mask = additive_padding_mask(memory_mask, x.dtype)
        recompute = self.activation_checkpointing and torch.is_grad_enabled() and kv_cache is None
        for layer in self.layers:
            if recompute:  # keep only each layer's input; recompute the layer in backward
                x = checkpoint(layer, x, bias, memory, cross_mask, None, use_reentrant=False)
            else:
                x = layer(x, bias, memory, cross_mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(t)
        return self.final_layernorm(x)

    def attention_bias(self, padding_mask, t: int, past: int, dtype) -> torch.Tensor:
        """The additive self-attention bias [1 or B, heads, T, past+T]: relative positions where a
        query may look, the dtype's most negative value where it may not (as transformers)."""
        s = past + t
        bias = self.position_bias(t, s, past).to(dtype)
        allowed = None
        if self.is_decoder and t > 1:
            q_pos = torch.arange(past, s, device=bias.device)[:, None]
            allowed = (torch.arange(s, device=bias.device)[None, :] <= q_pos)[None, None]
        if padding_mask is not None and not bool(padding_mask.all()):
            if padding_mask.shape[-1] != s:
                raise ValueError(f"The attention mask covers {padding_mask.shape[-1]} positions but there are {s} "
                                 "(with a cache, the mask must cover the cached positions too).")
            keys = padding_mask.bool()[:, None, None, :]
            allowed = keys if allowed is None else allowed & keys
        if allowed is None:
            return bias
        return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def additive_padding_mask(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """[B, S] (1 = real) -> additive [B, 1, 1, S], or None when nothing is padded."""
    if mask is None or bool(mask.all()):
        return None
    m = mask.bool()[:, None, None, :]
    return torch.zeros(m.shape, dtype=dtype, device=mask.device).masked_fill(~m, torch.finfo(dtype).min)


class T5KVCache:
    """The decoder's caches for incremental decoding.

    Self-attention keys/values grow by one position per step (a preallocated ``KVCache``);
    cross-attention keys/values depend only on the encoder output, so each layer computes
    them at the first step and reuses them afterwards.
    """

    def __init__(self, num_layers, batch_size, max_len, num_heads, head_dim, dtype, device):
        self.self_attention = KVCache(num_layers, batch_size, max_len, num_heads, head_dim, dtype, device)
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    @property
    def length(self) -> int:
        return self.self_attention.length

    @property
    def max_len(self) -> int:
        return self.self_attention.max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return self.self_attention.update(layer, k, v)

    def advance(self, n: int) -> None:
        self.self_attention.advance(n)

    def cross_kv(self, layer: int, attention: T5CrossAttention, memory: torch.Tensor | None):
        if self.cross[layer] is None:
            if memory is None:
                raise ValueError("The first decoding step with a fresh cache needs the encoder output "
                                 "(encoder_outputs or input_ids).")
            self.cross[layer] = attention.memory_kv(memory)
        return self.cross[layer]
