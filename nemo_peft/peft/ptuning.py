"""P-tuning: virtual tokens produced by a small prompt encoder (NeMo's ``p_tuning``).

A learned table [virtual_tokens, embedding_dim] goes through an MLP (or a
bidirectional LSTM and a linear head) to [virtual_tokens, hidden]; the result is
put in front of every sequence (the embedding's ``ptuning`` slot). The model is
NOT unchanged at initialisation: the virtual tokens are extra context from step 0.

Outside training the encoder output is cached in the persistent buffer
``inference_table``, so generation never runs the encoder (an eval-mode forward with
autograd on still passes gradients to the encoder; the values are the table's). The table is computed
when first needed and again after the encoder weights change (tracked through the
tensors' version counters, and always after a trip through train mode). It is
filled before the adapter's ``state_dict`` is taken, so saved adapters hold it;
a loaded table is used as is. ``freeze_to_table()`` drops the encoder for
inference-only use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nemo_peft.peft.base import PEFTConfig, SlotContext, check_choice, check_number, register

ENCODER_TYPES = ("mlp", "lstm")


def _refresh_before_state_dict(module, prefix, keep_vars):
    module.refresh_table()  # saved adapters hold an up-to-date inference table


class _LSTMHead(nn.Module):
    """Two-layer bidirectional LSTM, then a linear layer to the model's hidden size."""

    def __init__(self, embedding_dim: int, bottleneck_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(embedding_dim, bottleneck_dim, num_layers=2, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(2 * bottleneck_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.lstm(x.unsqueeze(0))[0].squeeze(0))


class PromptEncoder(nn.Module):
    """adapter() -> [virtual_tokens, hidden]: the encoder's output while training,
    the cached ``inference_table`` in eval mode (see the module docstring)."""

    def __init__(self, virtual_tokens: int, hidden: int, embedding_dim: int, bottleneck_dim: int,
                 init_std: float, encoder_type: str):
        super().__init__()
        self.encoder_type = encoder_type
        self.embedding = nn.Parameter(torch.empty(virtual_tokens, embedding_dim))
        nn.init.normal_(self.embedding, std=init_std)
        if encoder_type == "mlp":
            self.encoder = nn.Sequential(nn.Linear(embedding_dim, bottleneck_dim), nn.GELU(),
                                         nn.Linear(bottleneck_dim, hidden))
            for m in self.encoder:
                if isinstance(m, nn.Linear):  # NeMo: init_method_normal(init_std), zero bias
                    nn.init.normal_(m.weight, std=init_std)
                    nn.init.zeros_(m.bias)
        else:
            self.encoder = _LSTMHead(embedding_dim, bottleneck_dim, hidden)
        self.register_buffer("inference_table", torch.zeros(virtual_tokens, hidden), persistent=True)
        # Version counters of (encoder tensors, table) when the table was last in sync with
        # the encoder; None = never. A table written from outside (load) is trusted as is.
        self._synced_weights: tuple[int, ...] | None = None
        self._synced_table: int | None = None
        self.register_state_dict_pre_hook(_refresh_before_state_dict)

    @property
    def frozen(self) -> bool:
        """True after ``freeze_to_table``: only the table is left."""
        return self.encoder is None

    def _weights(self) -> list[torch.Tensor]:
        return [] if self.frozen else [self.embedding, *self.encoder.parameters()]

    def encode(self) -> torch.Tensor:
        """Run the encoder: [virtual_tokens, hidden]."""
        if self.frozen:
            raise RuntimeError("This PromptEncoder was frozen to its inference table; it has no encoder left.")
        return self.encoder(self.embedding)

    @torch.no_grad()
    def refresh_table(self) -> None:
        """Recompute ``inference_table`` if the encoder changed since it was last computed;
        a table loaded (written) from outside since then is kept."""
        if self.frozen:
            return
        table_version = self.inference_table._version
        if self._synced_table is not None and table_version != self._synced_table:
            pass  # written from outside (load_state_dict / load_adapters): it is the table to use
        elif self._synced_weights == tuple(w._version for w in self._weights()):
            return
        else:
            self.inference_table.copy_(self.encode().to(self.inference_table.dtype))
        self._synced_weights = tuple(w._version for w in self._weights())
        self._synced_table = self.inference_table._version

    def train(self, mode: bool = True):
        if mode and not self.frozen:
            self._synced_weights = None  # after training, eval recomputes the table
        return super().train(mode)

    def forward(self) -> torch.Tensor:
        if self.frozen:
            return self.inference_table
        if self.training:
            return self.encode()
        self.refresh_table()
        if torch.is_grad_enabled() and any(w.requires_grad for w in self._weights()):
            enc = self.encode()  # eval mode with autograd on: the table's values, the encoder's gradients
            return self.inference_table + (enc - enc.detach())
        return self.inference_table

    @torch.no_grad()
    def freeze_to_table(self) -> None:
        """Keep only the (current) inference table and drop the encoder: smaller, inference only.

        The saved adapter then holds just ``inference_table``; load it into a model whose
        adapter was frozen the same way."""
        self.refresh_table()
        self.embedding = None
        self.encoder = None

    def extra_repr(self) -> str:
        n, hidden = self.inference_table.shape
        return f"virtual_tokens={n}, hidden={hidden}, encoder={self.encoder_type}" + (
            ", frozen to table" if self.frozen else "")


@register("ptuning", section="p_tuning")
@dataclass
class PtuningPEFTConfig(PEFTConfig):
    """NeMo's ``p_tuning`` options."""

    virtual_tokens: int = 10
    bottleneck_dim: int = 1024
    embedding_dim: int = 1024
    init_std: float = 0.023
    encoder_type: str = "mlp"  # "mlp" | "lstm"

    aliases = {"num_virtual_tokens": "virtual_tokens", "encoder_hidden": "bottleneck_dim"}

    def __post_init__(self):
        self.encoder_type = str(self.encoder_type).lower()
        check_choice(self, "encoder_type", ENCODER_TYPES)
        for name in ("virtual_tokens", "bottleneck_dim", "embedding_dim"):
            check_number(self, name, integer=True, at_least=1)
        check_number(self, "init_std", above=0)

    def build_adapters(self, slots: list[SlotContext]):
        built = {}
        for ctx in slots:
            if ctx.spec.kind == "prompt" and ctx.spec.name == "ptuning":
                hidden = ctx.block.word_embeddings.embedding_dim
                built[ctx.key] = PromptEncoder(self.virtual_tokens, hidden, self.embedding_dim,
                                               self.bottleneck_dim, self.init_std, self.encoder_type)
        if not built:
            raise ValueError("P-tuning found no 'ptuning' slot: the model has no adapter-capable embedding.")
        return built
