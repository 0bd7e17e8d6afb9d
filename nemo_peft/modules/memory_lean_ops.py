"""RoPE and SwiGLU as autograd functions that save only what their backward needs.

Per layer of a 4 x 256 batch these save what the default graph would keep twice: RoPE keeps only
cos/sin (its backward is the inverse rotation), and SwiGLU keeps only its input [gate | up]
(silu(gate) is recomputed in backward). Forward values are computed exactly as the plain ops do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return x * cos + _rotate_half(x) * sin

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        z = grad * sin  # the transpose of rotate_half: [z1, z2] -> [z2, -z1]
        half = z.shape[-1] // 2
        return grad * cos + torch.cat((z[..., half:], -z[..., :half]), dim=-1), None, None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin (cos/sin broadcast to x; they take no gradient)."""
    if torch.is_grad_enabled() and x.requires_grad and not (cos.requires_grad or sin.requires_grad):
        return _Rotary.apply(x, cos, sin)
    return x * cos + _rotate_half(x) * sin


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        sig = torch.sigmoid(gate)
        silu = gate * sig
        d_gate = grad * up * (sig * (1 + gate * (1 - sig)))
        return torch.cat((d_gate, grad * silu), dim=-1)


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of h = [gate | up]."""
    if torch.is_grad_enabled() and h.requires_grad:
        return _SwiGLU.apply(h)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up
