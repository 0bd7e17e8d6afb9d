"""What the GPT and T5 attention blocks share: the adapter slots of a fused-QKV self-attention,
the adapted projections in and out, and prefix tuning's keys/values in front of the sequence.

A block using these has ``num_heads``, ``num_kv_heads`` and ``head_dim`` attributes and the
slots its helper touches (``linear_qkv`` with ``lora_qkv``/``ia3_key``/``ia3_value``,
``linear_proj`` with ``lora_proj``, ``prefix``).
"""
from __future__ import annotations

import torch
from torch import nn

from nemo_peft.core.slots import AdapterSlot, SlotSpec
from nemo_peft.modules.memory_lean_ops import rotary

# A self-attention with ``linear_qkv`` = [q | k | v] and ``linear_proj`` (GPT's and T5's alike)
FUSED_QKV_SLOTS = (
    SlotSpec("lora_qkv", "lora", "linear_qkv"),
    SlotSpec("lora_proj", "lora", "linear_proj"),
    SlotSpec("ia3_key", "scale", "linear_qkv"),  # scales the k part of linear_qkv's output
    SlotSpec("ia3_value", "scale", "linear_qkv"),  # scales the v part
    SlotSpec("prefix", "prefix"),  # learned key/value prefixes (prefix tuning / P-tuning v2)
)


def adapted_linear(linear: nn.Linear, lora: AdapterSlot, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` plus the LoRA update of its slot when one is active."""
    out = linear(x)
    return lora(x, out) if lora.active else out


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[B, T, heads * head_dim] -> [B, heads, T, head_dim]."""
    b, t, _ = x.shape
    return x.view(b, t, num_heads, head_dim).transpose(1, 2)


def scale_kv(block: nn.Module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IA3's rescaled keys and values (before they are split into heads)."""
    if block.ia3_key.active:
        k = block.ia3_key(k)
    if block.ia3_value.active:
        v = block.ia3_value(v)
    return k, v


def fused_qkv(block: nn.Module, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries [B, heads, T, head_dim] and keys/values [B, kv_heads, T, head_dim] from ``linear_qkv``;
    with ``rope`` = (cos, sin) [B, T, head_dim], queries and keys rotated (after IA3 rescaled the keys)."""
    hd, heads, kv_heads = block.head_dim, block.num_heads, block.num_kv_heads
    qkv = adapted_linear(block.linear_qkv, block.lora_qkv, x)
    b, t, _ = qkv.shape
    qk, v = qkv.split([(heads + kv_heads) * hd, kv_heads * hd], dim=-1)
    if block.ia3_key.active or block.ia3_value.active:
        q, k = qk.split([heads * hd, kv_heads * hd], dim=-1)
        k, v = scale_kv(block, k, v)
        if block.ia3_key.active:
            qk = torch.cat([q, k], dim=-1)
    if torch.is_grad_enabled() and v.requires_grad:
        # attention keeps v for backward: a view would keep the whole [q | k | v] output alive
        v = v.contiguous()
    qk = qk.view(b, t, heads + kv_heads, hd)
    if rope is not None:  # q and k in one rotation (a decoded token runs it once per layer)
        qk = rotary(qk, rope[0][:, :, None], rope[1][:, :, None])
    q, k = qk.split([heads, kv_heads], dim=2)
    return q.transpose(1, 2), k.transpose(1, 2), split_heads(v, kv_heads, hd)


def project_out(block: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The attention output [B, heads, T, head_dim] through ``linear_proj`` (and its LoRA)."""
    b, _, t, _ = y.shape
    y = y.transpose(1, 2).reshape(b, t, block.num_heads * block.head_dim)
    return adapted_linear(block.linear_proj, block.lora_proj, y)


def prepend_prefix(slot: AdapterSlot, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, additive: bool):
    """Every active adapter's key/value prefix in front of ``k``/``v``; the prefixes are always
    visible and carry no position. ``mask`` [.., T, S] is a boolean mask (True = attend) or, with
    ``additive``, a bias added to the scores; it gains n visible columns in front.
    Returns (k, v, mask) with S + n keys."""
    if slot.routing is not None:
        raise ValueError("Prefix tuning adapters cannot be routed per sample; run them in their own batch.")
    b = k.shape[0]
    pk, pv = zip(*(slot.adapters[n]() for n in slot.active))
    pk = torch.cat(pk, dim=1).to(k.dtype).unsqueeze(0).expand(b, -1, -1, -1)
    pv = torch.cat(pv, dim=1).to(v.dtype).unsqueeze(0).expand(b, -1, -1, -1)
    visible = mask.new_full((*mask.shape[:-1], pk.shape[2]), 0.0 if additive else True)
    return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), torch.cat([visible, mask], dim=-1)
