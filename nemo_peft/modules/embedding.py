"""Token embeddings plus optional learned absolute positions (GPT-2)."""
from __future__ import annotations

from torch import nn


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int | None):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size) if max_positions else None

    def forward(self, input_ids, position_ids):
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        return x
