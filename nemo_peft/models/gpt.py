"""A decoder-only transformer covering the GPT-2 and Llama families from one config."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nemo_peft.core.mixin import AdapterMixin
from nemo_peft.models.config import ModelConfig
from nemo_peft.modules.chunked_loss import linear_cross_entropy
from nemo_peft.modules.embedding import Embedding
from nemo_peft.modules.gpt_layer import TransformerStack
from nemo_peft.modules.kv_cache import KVCache
from nemo_peft.modules.linear import Linear, linear
from nemo_peft.modules.rope import RotaryEmbedding
from nemo_peft.modules.segment_mask import segment_attention_mask, segment_positions
from nemo_peft.modules.weight_layout import DecodeLayout, store_base_weights_in_decode_layout


@dataclass
class GPTConfig(ModelConfig):
    """Megatron-style names. Defaults give a tiny Llama-like model."""

    vocab_size: int = 256
    hidden_size: int = 64  # HF: hidden_size (n_embd in GPT-2)
    num_layers: int = 2  # HF: num_hidden_layers (n_layer)
    num_attention_heads: int = 4  # HF: num_attention_heads (n_head)
    num_query_groups: int | None = None  # KV heads for GQA; None = num_attention_heads
    kv_channels: int | None = None  # head dim; None = hidden_size // num_attention_heads
    ffn_hidden_size: int = 128
    max_position_embeddings: int = 2048
    position_embedding_type: str = "rope"  # "rope" | "learned_absolute"
    rotary_base: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "linear"|"llama3", "factor": ...}
    normalization: str = "RMSNorm"  # "RMSNorm" | "LayerNorm"
    layernorm_epsilon: float = 1e-5
    activation: str = "silu"  # "silu" | "gelu" | "gelu_tanh" | "relu"
    gated_linear_unit: bool = True  # SwiGLU when activation="silu"
    add_bias_linear: bool = False
    add_qkv_bias: bool = False  # Qwen2: bias on QKV only
    share_embeddings_and_output_weights: bool = True
    sliding_window: int | None = None  # Mistral-style: each query sees only its last N keys; None = all
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. source file)

    def __post_init__(self):
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.position_embedding_type not in ("rope", "learned_absolute"):
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r}; use 'rope' or 'learned_absolute'."
            )

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads


class GPTModel(DecodeLayout, nn.Module, AdapterMixin):
    # FSDP2 (models/fsdp.py): methods called besides forward that read the root's weights
    fsdp_forward_methods = ("logits", "lm_loss")

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        learned = cfg.position_embedding_type == "learned_absolute"
        self.embedding = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings if learned else None)
        self.rotary = None if learned else RotaryEmbedding(cfg.head_dim, cfg.rotary_base, cfg.rope_scaling)
        self.decoder = TransformerStack(cfg)
        self.output_layer = None
        if not cfg.share_embeddings_and_output_weights:
            self.output_layer = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(_init_weights)
        store_base_weights_in_decode_layout(self, self.output_weight())  # faster decode GEMVs

    def fsdp_units(self) -> list[nn.Module]:
        """The blocks FSDP2 shards one by one."""
        return list(self.decoder.layers)

    # --- forward ---
    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache: KVCache | None = None,
                return_hidden: bool = False, segment_ids=None):
        """Logits [B, T, V] (or the final hidden states with ``return_hidden``).

        ``attention_mask`` [B, past+T] marks real tokens (1) and padding (0); with a
        cache it covers the cached positions too. Without padding leave it None.
        ``segment_ids`` [B, T] (packed rows: 1, 2, ... per example, 0 on padding) keeps attention
        within each example; ``position_ids`` then default to restarting at 0 per example.
        """
        b, t = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        # Virtual tokens (P-tuning / prompt tuning) sit before the input at positions
        # 0..n-1; they enter the cache once, at prefill, and are cut from the output.
        virtual = self.embedding.virtual_tokens()
        n = 0 if virtual is None else virtual.shape[0]
        if segment_ids is not None:
            _check_packed(attention_mask, kv_cache, n)
            if position_ids is None:
                position_ids = segment_positions(segment_ids)
        if position_ids is None:
            start = past if past else n
            position_ids = torch.arange(start, start + t, device=input_ids.device).expand(b, t)
        elif n:
            position_ids = position_ids + n
        if n and attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        prepend = n > 0 and past == 0
        if prepend:
            virtual_pos = torch.arange(n, device=input_ids.device).expand(b, n)
            position_ids = torch.cat([virtual_pos, position_ids], dim=1)
        x = self.embedding(input_ids, position_ids, virtual if prepend else None)
        t_in = x.shape[1]
        rope = self.rotary(position_ids, x.dtype) if self.rotary is not None else None
        if segment_ids is not None:  # built once here, shared by every layer
            mask = segment_attention_mask(segment_ids, self.config.sliding_window)
        else:
            mask = _attention_mask(attention_mask, past, t_in, input_ids.device, self.config.sliding_window)
        x = self.decoder(x, rope, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(t_in)
        if prepend:
            x = x[:, n:]
        return x if return_hidden else self.logits(x)

    def output_weight(self) -> torch.Tensor:
        return self.embedding.word_embeddings.weight if self.output_layer is None else self.output_layer.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(hidden, self.output_weight())

    def lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``logits(hidden)`` against ``labels`` (-100 = ignore), computed in
        chunks so the full logits are never held (see modules/chunked_loss.py)."""
        return linear_cross_entropy(hidden, self.output_weight(), labels)

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A cache for ``max_len`` real tokens (room for active virtual tokens is added)."""
        p = self.embedding.word_embeddings.weight
        c = self.config
        virtual = self.embedding.virtual_tokens()
        max_len += 0 if virtual is None else virtual.shape[0]
        return KVCache(c.num_layers, batch_size, max_len, c.num_query_groups, c.head_dim, p.dtype, p.device)


def _check_packed(attention_mask, kv_cache, virtual: int) -> None:
    """Packed rows (``segment_ids``) are a training input: padding is segment 0, there is no cache,
    and virtual tokens in front of a row would be seen by its first example only."""
    if attention_mask is not None:
        raise ValueError("Give segment_ids or attention_mask, not both: segment 0 already marks padding.")
    if kv_cache is not None:
        raise ValueError("segment_ids (packed rows) cannot be used with a KV cache; generate from unpacked prompts.")
    if virtual:
        raise ValueError("Packed rows (data.train_ds.packed_sequence=true) cannot be used with virtual-token adapters "
                         "(P-tuning, prompt tuning): the virtual tokens would precede only a row's first example. "
                         "Set data.train_ds.packed_sequence=false.")


def _attention_mask(padding_mask, past: int, t: int, device, sliding_window: int | None = None):
    """Boolean [B, 1, T, past+T] mask (True = attend), or None when plain causal works.

    ``sliding_window`` W lets query i see keys j with i - W < j <= i (cache index space,
    like transformers' sliding-window mask); it only matters once past + T > W.
    """
    windowed = sliding_window is not None and past + t > sliding_window
    if padding_mask is None or bool(padding_mask.all()):
        if not windowed and (past == 0 or t == 1):
            return None  # SDPA's is_causal (t > 1) or no mask (single new token)
        padding_mask = torch.ones(1, past + t, dtype=torch.bool, device=device)
    keys = padding_mask.bool()[:, None, None, :]  # [B, 1, 1, S]
    q_pos = torch.arange(past, past + t, device=device)[:, None]
    k_pos = torch.arange(past + t, device=device)[None, :]
    causal = (k_pos <= q_pos)[None, None]
    if windowed:
        causal = causal & (k_pos > q_pos - sliding_window)[None, None]
    # Let every query see itself so padded rows are never fully masked (NaN in SDPA).
    return (keys & causal) | (k_pos == q_pos)[None, None]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
