"""A preallocated key/value cache for incremental decoding."""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, [layers, B, kv_heads, max_len, head_dim].

    Layers write their new keys/values at ``length`` and read everything up to it;
    the model calls ``advance`` once per forward, after all layers ran.
    """

    def __init__(self, num_layers, batch_size, max_len, num_kv_heads, head_dim, dtype, device):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"KV cache overflow: {end} positions needed but the cache holds {self.max_len}; "
                "allocate it with a larger max_len (prompt length + max_new_tokens)."
            )
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, n: int) -> None:
        self.length += n
