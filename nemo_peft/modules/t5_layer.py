"""The T5 layer and stack: pre-norm self-attention, (decoder only) cross-attention and
feed-forward, with the stack's relative position bias and masks computed once per forward.

The feed-forward block is the shared ``MLP`` (``linear_fc1`` = wi, or [wi_0 | wi_1] as
[gate | up] when gated; ``linear_fc2`` = wo) and the norms are ``RMSNorm`` (T5's LayerNorm:
no mean, no bias).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nemo_peft.core.slots import SlotSpec, add_adapter_slots
from nemo_peft.modules.mlp import MLP
from nemo_peft.modules.norm import RMSNorm
from nemo_peft.modules.t5_attention import RelativePositionBias, T5CrossAttention, T5SelfAttention


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

    @torch.no_grad()
    def init_weights(self, cfg) -> None:
        """transformers' T5 init of the attentions and the feed-forward block."""
        self.self_attention.init_weights(cfg)
        if self.cross_attention is not None:
            self.cross_attention.init_weights(cfg)
        nn.init.normal_(self.mlp.linear_fc1.weight, std=cfg.d_model ** -0.5)
        nn.init.normal_(self.mlp.linear_fc2.weight, std=cfg.d_ff ** -0.5)


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

    @torch.no_grad()
    def init_weights(self, cfg) -> None:
        """transformers' T5 init of the position bias and every layer (the norms keep their ones)."""
        self.position_bias.init_weights(cfg)
        for layer in self.layers:
            layer.init_weights(cfg)

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
