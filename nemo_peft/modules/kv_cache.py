"""Key/value caches for incremental decoding: ``KVCache`` (preallocated self-attention keys and
values) and ``T5KVCache`` (the T5 decoder's: self-attention plus the encoder's cross-attention ones)."""
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
        # narrow on the layer's own view: 3 ops per tensor instead of indexing's select/slice chains
        k_all, v_all = self.k[layer], self.v[layer]
        k_all.narrow(2, self.length, k.shape[2]).copy_(k)
        v_all.narrow(2, self.length, v.shape[2]).copy_(v)
        return k_all.narrow(2, 0, end), v_all.narrow(2, 0, end)

    def advance(self, n: int) -> None:
        self.length += n

    def put_rows(self, rows: torch.Tensor, group: "KVCache", n: int, t: int) -> None:
        """Copy the cache of a group of prompts, left-padded to ``n`` tokens, into batch ``rows`` of this
        fresh cache of prompts left-padded to ``t`` (see models/prefill.py): positions in front of the
        prompts (active virtual tokens) stay in front, the ``n`` prompt positions end at the batch's
        last prompt position; the batch's padding before them is never attended (masked)."""
        front = group.length - n
        self.k[:, rows, :, :front] = group.k[:, :, :, :front]
        self.v[:, rows, :, :front] = group.v[:, :, :, :front]
        end = front + t
        self.k[:, rows, :, end - n:end] = group.k[:, :, :, front:front + n]
        self.v[:, rows, :, end - n:end] = group.v[:, :, :, front:front + n]
        self.length = end

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (ascending), in that order: finished rows of a generation stop
        costing compute. Rows move down in place (row ``rows[j] >= j`` to ``j``, so no source is overwritten
        before it is read) and the batch is then cut: no new cache is allocated (a fresh 38 MB cache per
        shrink cost more in page faults than the copy itself)."""
        kept = rows.tolist()
        if kept != sorted(set(kept)):
            raise ValueError(f"keep_rows needs ascending, distinct row indices, got {kept}.")
        for j, r in enumerate(kept):
            if r != j:
                self.k[:, j].copy_(self.k[:, r])
                self.v[:, j].copy_(self.v[:, r])
        self.k, self.v = self.k[:, :len(kept)], self.v[:, :len(kept)]


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

    def cross_kv(self, layer: int, attention, memory: torch.Tensor | None):
        """The cross-attention keys/values of ``layer``: ``attention.memory_kv(memory)`` at the first step."""
        if self.cross[layer] is None:
            if memory is None:
                raise ValueError("The first decoding step with a fresh cache needs the encoder output "
                                 "(encoder_outputs or input_ids).")
            self.cross[layer] = attention.memory_kv(memory)
        return self.cross[layer]
