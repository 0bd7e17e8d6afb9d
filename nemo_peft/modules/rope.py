"""Rotary position embeddings (RoPE) with theta and the common scaling schemes."""
from __future__ import annotations

import math

import torch
from torch import nn


def rope_inv_freq(head_dim: int, base: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "dynamic":
        # Dynamic NTK: the plain frequencies up to the original length; longer sequences
        # get a larger base, computed per forward (see ``dynamic_ntk_inv_freq``).
        if float(scaling["factor"]) < 1 or int(scaling["original_max_position_embeddings"]) < 1:
            raise ValueError(f"Dynamic rope scaling needs factor >= 1 and original_max_position_embeddings >= 1, "
                             f"got {scaling}.")
        return inv_freq
    if kind == "llama3":
        # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend between.
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return torch.where(medium, blended, scaled)
    raise ValueError(
        f"Unsupported rope scaling type {kind!r}; supported: 'linear', 'llama3', 'dynamic' (or none)."
    )


def dynamic_ntk_inv_freq(head_dim: int, base: float, factor: float, original_max: int, seq_len: int) -> torch.Tensor:
    """Dynamic-NTK frequencies for a sequence of ``seq_len`` positions, as transformers computes them.

    Up to ``original_max`` they are the plain ones; beyond it the base grows to
    ``base * (factor * seq_len / original_max - (factor - 1)) ** (d / (d - 2))``.
    The arithmetic is done in fp32 tensors like transformers' ``_compute_dynamic_ntk_parameters``.
    """
    seq = torch.tensor(max(int(seq_len), int(original_max)))
    new_base = base * ((factor * seq / original_max) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return 1.0 / (new_base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


class RotaryEmbedding(nn.Module):
    """Produces (cos, sin) of shape [B, T, head_dim] for given position ids.

    With ``{"rope_type": "dynamic"}`` scaling the frequencies depend on the sequence:
    a forward whose largest position id is ``>= original_max_position_embeddings``
    uses NTK-scaled frequencies for ``max(position_ids) + 1`` positions (what
    transformers' dynamic RoPE computes for that call). Unlike transformers, nothing
    is cached between calls, so the result of one call never depends on earlier ones.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
        self.dynamic = None
        if kind == "dynamic":
            self.dynamic = (float(scaling["factor"]), int(scaling["original_max_position_embeddings"]))
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, base, scaling), persistent=False)

    def _apply(self, fn, recurse=True):
        # model.to(bf16) must not round the frequencies: keep them fp32 (angles grow with position).
        inv_freq = self.inv_freq
        out = super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(device=self.inv_freq.device, dtype=torch.float32)
        return out

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        inv_freq = self.inv_freq
        if self.dynamic is not None:
            factor, original_max = self.dynamic
            seq_len = int(position_ids.max()) + 1
            if seq_len > original_max:
                inv_freq = dynamic_ntk_inv_freq(self.head_dim, self.base, factor, original_max, seq_len)
                inv_freq = inv_freq.to(self.inv_freq.device)
        freqs = position_ids[..., None].float() * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)
