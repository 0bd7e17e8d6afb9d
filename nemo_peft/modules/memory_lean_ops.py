"""RoPE, SwiGLU and low-precision RMSNorm as autograd functions that save only what backward needs.

Per layer of a 4 x 256 batch these save what the default graph would keep twice: RoPE keeps only
cos/sin (its backward is the inverse rotation), and SwiGLU keeps only its input [gate | up]
(silu(gate) is recomputed in backward). RMSNorm of a bf16/fp16 input normalizes in fp32 like the
reference models, but keeps the input in its own dtype for backward, not an fp32 copy (half the bytes).
Forward values are computed exactly as the plain ops do.
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


class _RMSNormLowPrecision(torch.autograd.Function):
    """rms_norm(x.float()).to(x.dtype) saving x itself and the fp32 1/rms, not x.float()."""

    @staticmethod
    def forward(ctx, x, eps: float):
        xf = x.float()
        inv_rms = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, inv_rms)
        return F.rms_norm(xf, (x.shape[-1],), eps=eps).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, inv_rms = ctx.saved_tensors
        xf, g = x.float(), grad.float()
        # d/dx of x * r with r = mean(x^2)^-1/2: r * g - x * r^3 * mean(g * x)
        dx = inv_rms * g - xf * inv_rms.pow(3) * (g * xf).mean(-1, keepdim=True)
        return dx.to(x.dtype), None


def rms_norm_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalize the last dimension in fp32 and return x's dtype (no weight)."""
    if x.dtype != torch.float32 and torch.is_grad_enabled() and x.requires_grad:
        return _RMSNormLowPrecision.apply(x, eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
