"""Token embeddings plus optional learned absolute positions (GPT-2)."""
from __future__ import annotations

import torch
from torch import nn

from nemo_peft.core.slots import SlotSpec, add_adapter_slots


class Embedding(nn.Module):
    adapter_slots = (
        SlotSpec("ptuning", "prompt"),  # P-tuning: virtual tokens from a prompt encoder
        SlotSpec("prompt", "prompt"),  # prompt tuning: a learned soft prompt
    )

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int | None):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size) if max_positions else None
        add_adapter_slots(self)

    def virtual_tokens(self) -> torch.Tensor | None:
        """[n, hidden] embeddings of the active virtual tokens (P-tuning, prompt tuning), or None."""
        parts = [slot.adapters[n]() for slot in (self.ptuning, self.prompt) for n in slot.active]
        if not parts:
            return None
        if self.ptuning.routing is not None or self.prompt.routing is not None:
            raise ValueError("Virtual-token adapters cannot be routed per sample; run them in their own batch.")
        return torch.cat(parts, dim=0)

    def forward(self, input_ids, position_ids, virtual: torch.Tensor | None = None):
        """Token embeddings, after ``virtual`` [n, hidden] if given; ``position_ids``
        then covers the virtual tokens too."""
        x = self.word_embeddings(input_ids)
        if virtual is not None:
            x = torch.cat([virtual.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1), x], dim=1)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        return x
