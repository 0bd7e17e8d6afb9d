"""A T5-style encoder-decoder (T5, T5 v1.1 / Flan-T5, mT5) built from the same blocks as GPTModel.

Adapter slots sit in the encoder self-attention, the decoder self-attention, the
cross-attention and both stacks' MLPs, declared as data like the GPT blocks, so every
PEFT method that fills lora/scale/residual/prefix/prompt slots works here unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nemo_peft.core.mixin import AdapterMixin
from nemo_peft.models.config import ModelConfig
from nemo_peft.modules.chunked_loss import linear_cross_entropy
from nemo_peft.modules.embedding import Embedding
from nemo_peft.modules.kv_cache import T5KVCache
from nemo_peft.modules.linear import Linear, linear
from nemo_peft.modules.t5_layer import T5Stack
from nemo_peft.modules.weight_layout import DecodeLayout, store_base_weights_in_decode_layout

# transformers' activation names (the part of feed_forward_proj after "gated-") -> ours
T5_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "silu": "silu", "swish": "silu"}


def parse_feed_forward_proj(value: str) -> tuple[str, bool]:
    """(our activation, gated) of a transformers ``feed_forward_proj`` such as "relu" or "gated-gelu".

    As in transformers, "gated-gelu" means the tanh approximation (gelu_new)."""
    parts = str(value).split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated) or parts[-1] not in T5_ACTIVATIONS:
        raise ValueError(f"feed_forward_proj={value!r} is not supported; use '<act>' or 'gated-<act>' with <act> "
                         f"one of {sorted(T5_ACTIVATIONS)} (T5: 'relu', T5 v1.1/Flan-T5/mT5: 'gated-gelu').")
    act = "gelu_tanh" if value == "gated-gelu" else T5_ACTIVATIONS[parts[-1]]
    return act, gated


@dataclass
class T5Config(ModelConfig):
    """transformers' T5 names. Defaults give a tiny T5 (relu, tied embeddings)."""

    vocab_size: int = 256
    d_model: int = 64
    d_kv: int = 16  # head dim; num_heads * d_kv need not equal d_model
    d_ff: int = 128
    num_layers: int = 2  # encoder layers
    num_decoder_layers: int | None = None  # None = num_layers
    num_heads: int = 4
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (T5) | "gated-gelu" (T5 v1.1, Flan-T5, mT5) | "[gated-]<act>"
    tie_word_embeddings: bool = True  # the LM head reuses the input embeddings
    # multiply the decoder output by d_model**-0.5 before the LM head; None = tie_word_embeddings (T5's rule)
    scale_decoder_outputs: bool | None = None
    decoder_start_token_id: int = 0  # T5 starts decoding from the pad token
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    extra: dict = field(default_factory=dict)  # free-form provenance (e.g. source file)

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = bool(self.tie_word_embeddings)
        parse_feed_forward_proj(self.feed_forward_proj)  # fail early on a bad value
        if self.relative_attention_num_buckets < 4 or self.relative_attention_max_distance < 2:
            raise ValueError(f"relative_attention_num_buckets={self.relative_attention_num_buckets} must be >= 4 and "
                             f"relative_attention_max_distance={self.relative_attention_max_distance} >= 2.")

    @property
    def activation(self) -> str:
        return parse_feed_forward_proj(self.feed_forward_proj)[0]

    @property
    def gated(self) -> bool:
        return parse_feed_forward_proj(self.feed_forward_proj)[1]


class T5Model(DecodeLayout, nn.Module, AdapterMixin):
    # FSDP2 (models/fsdp.py): methods called besides forward that read the root's weights
    fsdp_forward_methods = ("logits", "lm_loss", "encode")
    """``embedding`` (shared by encoder and decoder; its prompt slots prepend virtual tokens to
    the encoder input), ``encoder`` and ``decoder`` stacks, and ``output_layer`` when untied."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.config = cfg
        self.embedding = Embedding(cfg.vocab_size, cfg.d_model, None)
        self.encoder = T5Stack(cfg, cfg.num_layers, is_decoder=False)
        self.decoder = T5Stack(cfg, cfg.num_decoder_layers, is_decoder=True)
        self.output_layer = None
        if not cfg.tie_word_embeddings:
            self.output_layer = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._init_weights()
        store_base_weights_in_decode_layout(self, self.output_weight())  # faster decode GEMVs

    # --- forward ---
    def fsdp_units(self) -> list[nn.Module]:
        """The blocks FSDP2 shards one by one."""
        return [*self.encoder.layers, *self.decoder.layers]

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder output [B, n+S, d_model]; n active virtual tokens (prompt tuning) come first."""
        x = self.embedding.word_embeddings(input_ids)
        virtual = self.embedding.virtual_tokens()
        if virtual is not None:
            b, n = x.shape[0], virtual.shape[0]
            x = torch.cat([virtual.to(x.dtype).unsqueeze(0).expand(b, -1, -1), x], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)
        return self.encoder(x, attention_mask)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, kv_cache: T5KVCache | None = None, return_hidden: bool = False):
        """Logits [B, T, V] of the decoder (or its final hidden states with ``return_hidden``).

        ``attention_mask`` [B, S] marks real encoder tokens (1) and padding (0);
        ``decoder_attention_mask`` [B, past+T] does the same for the decoder (causal masking is
        always applied; right padding needs no mask). ``encoder_outputs`` (from ``encode``)
        skips the encoder; with a ``kv_cache`` holding the cross-attention keys/values it may
        be None after the first step.
        """
        if decoder_input_ids is None:
            raise ValueError("T5Model.forward needs decoder_input_ids (the decoder start token followed by the "
                             "shifted labels); call encode() to run the encoder alone.")
        if encoder_outputs is None:
            if input_ids is not None:
                encoder_outputs = self.encode(input_ids, attention_mask)
            elif kv_cache is None or kv_cache.length == 0:
                raise ValueError("T5Model.forward needs input_ids or encoder_outputs.")
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = encoder_outputs[0]
        memory_mask = attention_mask
        if memory_mask is not None:  # virtual tokens sit in front of the encoder input: always visible
            if encoder_outputs is not None:
                memory_len = encoder_outputs.shape[1]
            else:
                memory_len = next((kv[0].shape[2] for kv in kv_cache.cross if kv is not None), memory_mask.shape[1])
            n = memory_len - memory_mask.shape[1]
            if n > 0:
                memory_mask = torch.cat([memory_mask.new_ones(memory_mask.shape[0], n), memory_mask], dim=1)
        x = self.embedding.word_embeddings(decoder_input_ids)
        hidden = self.decoder(x, decoder_attention_mask, encoder_outputs, memory_mask, kv_cache)
        return hidden if return_hidden else self.logits(hidden)

    def output_weight(self) -> torch.Tensor:
        return self.embedding.word_embeddings.weight if self.output_layer is None else self.output_layer.weight

    def _head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden * self.config.d_model ** -0.5 if self.config.scale_decoder_outputs else hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return linear(self._head_input(hidden), self.output_weight())

    def lm_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``logits(hidden)`` against ``labels`` (-100 = ignore), in chunks."""
        return linear_cross_entropy(self._head_input(hidden), self.output_weight(), labels)

    def new_kv_cache(self, batch_size: int, max_len: int) -> T5KVCache:
        """A decoder cache for ``max_len`` decoder positions (the start token included)."""
        p = self.embedding.word_embeddings.weight
        c = self.config
        return T5KVCache(c.num_decoder_layers, batch_size, max_len, c.num_heads, c.d_kv, p.dtype, p.device)

    # --- init: transformers' T5 scheme; each block initialises its own weights ---
    @torch.no_grad()
    def _init_weights(self) -> None:
        # this order (encoder, decoder, then the embeddings) fixes the random draws for a given seed
        self.encoder.init_weights(self.config)
        self.decoder.init_weights(self.config)
        nn.init.normal_(self.embedding.word_embeddings.weight, std=1.0)
        if self.output_layer is not None:
            nn.init.normal_(self.output_layer.weight, std=1.0)
