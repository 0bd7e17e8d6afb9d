"""Normalization layers: LayerNorm (GPT-2) and RMSNorm (Llama, T5)."""
from __future__ import annotations

import torch
from torch import nn

from nemo_peft.modules.memory_lean_ops import rms_norm_fp32


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in fp32 like the reference implementations, then cast back.
        return self.weight * rms_norm_fp32(x, self.eps)


def build_norm(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "LayerNorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "RMSNorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"Unknown normalization {kind!r}; use 'LayerNorm' or 'RMSNorm'.")
