"""RoPE, SwiGLU and low-precision RMSNorm as autograd functions that save only what backward needs.

Per layer of a 4 x 256 batch these save what the default graph would keep twice: RoPE keeps only
cos/sin (its backward is the inverse rotation), and SwiGLU keeps only its input [gate | up]
(silu(gate) is recomputed in backward). RMSNorm of a bf16/fp16 input normalizes in fp32 like the
reference models, but keeps the input in its own dtype for backward, not an fp32 copy (half the bytes).
Forward values are computed exactly as the plain ops do. Under ``torch.compile`` the plain ops run
instead: the compiler fuses them and its partitioner already recomputes cheap ops in backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin on the halves [x1, x2] for sign 1, i.e. [x1 c1 - x2 s1, x2 c2 + x1 s2]
    (bitwise: the same products and sums, no fused multiply-add); its transpose [x1 c1 + x2 s2, x2 c2 - x1 s1]
    for sign -1. The halves swap in one ``roll``: six small ops in all, which is what a decoded token pays
    (once per layer, for q and k together); the output is dense in x's own memory order."""
    half = x.shape[-1] // 2
    if sign > 0:
        r = x.roll(half, -1)  # [x2, x1]
        r[..., :half].neg_()
        r.mul_(sin)
    else:
        r = torch.mul(x, sin).roll(half, -1)  # [x2 s2, x1 s1]
        r[..., half:].neg_()
    return torch.mul(x, cos).add_(r)


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None, None  # the transpose of rotate_half: [z1, z2] -> [z2, -z1]


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin (cos/sin broadcast to x; they take no gradient)."""
    if torch.compiler.is_compiling():  # plain ops: the compiler fuses them and picks what to save
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    if torch.is_grad_enabled() and x.requires_grad and not (cos.requires_grad or sin.requires_grad):
        return _Rotary.apply(x, cos, sin)
    return _rotate(x, cos, sin, 1.0)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        ctx.save_for_backward(h)
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        (h,) = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)  # [d_gate | d_up] written in place: no cat, few temporaries
        d_gate, d_up = dh.chunk(2, dim=-1)
        torch.mul(F.silu(gate), grad, out=d_up)  # d_up = grad * silu(gate)
        # d_gate = grad * up * silu'(gate): aten's fused silu_backward, what plain autograd runs
        torch.ops.aten.silu_backward(torch.mul(grad, up), gate, grad_input=d_gate)
        return dh


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of h = [gate | up]."""
    # under torch.compile the plain ops, which the compiler fuses and whose saves its partitioner picks
    if torch.is_grad_enabled() and h.requires_grad and not torch.compiler.is_compiling():
        return _SwiGLU.apply(h)
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


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
    if x.dtype != torch.float32 and torch.is_grad_enabled() and x.requires_grad \
            and not torch.compiler.is_compiling():
        return _RMSNormLowPrecision.apply(x, eps)
    if x.dtype == torch.float32:  # no casts to dispatch (2 x layers norms per decoded token)
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
