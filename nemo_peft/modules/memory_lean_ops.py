"""RoPE, SwiGLU and RMSNorm as autograd functions that save only what backward needs.

Per layer of a 4 x 256 batch these save what the default graph would keep twice: RoPE keeps only
cos/sin (its backward is the inverse rotation), and SwiGLU keeps only its input [gate | up]
(silu(gate) is recomputed in backward). RMSNorm normalizes in fp32 like the reference models and keeps
for backward its input in its own dtype (for bf16/fp16 not an fp32 copy: half the bytes) and 1/rms.
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


def _rms_norm_and_inverse_rms(xf: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """F.rms_norm(xf) (the same values) and the fp32 1/rms it divided by, in one pass where aten has it."""
    if hasattr(torch.ops.aten, "_fused_rms_norm"):  # torch >= 2.8: the kernel F.rms_norm runs, with its rstd
        return torch.ops.aten._fused_rms_norm(xf, [xf.shape[-1]], None, eps)
    return F.rms_norm(xf, (xf.shape[-1],), eps=eps), torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)


class _RMSNorm(torch.autograd.Function):
    """rms_norm(x.float()).to(x.dtype) saving x in its own dtype (no fp32 copy of a bf16 x) and the
    [..., 1] fp32 1/rms; backward is 4 passes over x where the decomposed autograd graph takes ~12."""

    @staticmethod
    def forward(ctx, x, eps: float):
        y, inv_rms = _rms_norm_and_inverse_rms(x.float(), eps)
        ctx.save_for_backward(x, inv_rms)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, inv_rms = ctx.saved_tensors
        xf, g = x.float(), grad.float()
        # d/dx of x * r with r = mean(x^2)^-1/2: r * (g - x * r^2 * mean(g * x))
        c = (g * xf).mean(-1, keepdim=True).mul_(inv_rms.square())
        return torch.addcmul(g, xf, c, value=-1.0).mul_(inv_rms).to(x.dtype), None


def rms_norm_fp32(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalize the last dimension in fp32 and return x's dtype (no weight)."""
    if torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling():
        return _RMSNorm.apply(x, eps)
    if x.dtype == torch.float32:  # no casts to dispatch (2 x layers norms per decoded token)
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
