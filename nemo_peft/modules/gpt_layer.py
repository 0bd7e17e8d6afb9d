"""The GPT layer and stack: pre-norm x + attn(norm(x)), then x + mlp(norm(x)), and the final norm."""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from nemo_peft.core.slots import SlotSpec, add_adapter_slots
from nemo_peft.modules.gpt_attention import SelfAttention
from nemo_peft.modules.mlp import MLP
from nemo_peft.modules.norm import build_norm
from nemo_peft.modules.recompute import rebuilt_in_backward


class TransformerLayer(nn.Module):
    adapter_slots = (
        SlotSpec("adapter_post_attn", "residual"),  # Houlsby bottleneck on the attention output
        SlotSpec("adapter_post_mlp", "residual"),  # ... and on the MLP output
    )

    def __init__(self, cfg, layer_index: int):
        super().__init__()
        self.input_layernorm = build_norm(cfg.normalization, cfg.hidden_size, cfg.layernorm_epsilon)
        self.self_attention = SelfAttention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups, cfg.head_dim,
            qkv_bias=cfg.add_qkv_bias, proj_bias=cfg.add_bias_linear, layer_index=layer_index,
        )
        self.pre_mlp_layernorm = build_norm(cfg.normalization, cfg.hidden_size, cfg.layernorm_epsilon)
        self.mlp = MLP(cfg.hidden_size, cfg.ffn_hidden_size, cfg.activation, cfg.gated_linear_unit, cfg.add_bias_linear)
        add_adapter_slots(self)

    def forward(self, x, rope=None, attn_mask=None, kv_cache=None):
        n = self.input_layernorm(x)
        with rebuilt_in_backward(n, partial(self.input_layernorm, x)):  # LoRA on q/k/v need not keep n
            a = self.self_attention(n, rope, attn_mask, kv_cache)
        if self.adapter_post_attn.active:
            a = self.adapter_post_attn(a)
        x = x + a
        n = self.pre_mlp_layernorm(x)
        with rebuilt_in_backward(n, partial(self.pre_mlp_layernorm, x)):  # (partial: x is rebound)
            m = self.mlp(n)
        if self.adapter_post_mlp.active:
            m = self.adapter_post_mlp(m)
        return x + m


class TransformerStack(nn.Module):
    """Megatron's ``decoder``: the layers and the final norm."""

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(cfg, i) for i in range(cfg.num_layers))
        self.final_layernorm = build_norm(cfg.normalization, cfg.hidden_size, cfg.layernorm_epsilon)
        # NeMo's activations_checkpoint_granularity="full": keep only each layer's input in training
        # and recompute the layer in backward (less memory, one more forward of the layers)
        self.activation_checkpointing = False

    def forward(self, x, rope=None, attn_mask=None, kv_cache=None):
        recompute = self.activation_checkpointing and torch.is_grad_enabled() and kv_cache is None
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, rope, attn_mask, None, use_reentrant=False)
            else:
                x = layer(x, rope, attn_mask, kv_cache)
        return self.final_layernorm(x)
