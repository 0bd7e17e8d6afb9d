"""The memory-lean RoPE and SwiGLU against the plain ops: same values, same gradients."""
import torch
import torch.nn.functional as F

from nemo_peft.modules.memory_lean_ops import rotary, swiglu


def plain_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def check(fn, ref, *inputs):
    g = torch.Generator().manual_seed(0)
    a = [t.clone().requires_grad_(t.requires_grad) for t in inputs]
    b = [t.clone().requires_grad_(t.requires_grad) for t in inputs]
    out, expected = fn(*a), ref(*b)
    assert torch.equal(out, expected)  # forward computes exactly what the plain ops do
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    (expected * w).sum().backward()
    torch.testing.assert_close(a[0].grad, b[0].grad, rtol=1e-6, atol=1e-6)


def test_rotary_matches_the_plain_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 8, generator=g, requires_grad=True)
    angles = torch.randn(2, 1, 5, 8, generator=g)
    check(rotary, plain_rotary, x, angles.cos(), angles.sin())


def test_swiglu_matches_silu_times_up():
    h = torch.randn(4, 7, 2 * 6, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def plain(t):
        gate, up = t.chunk(2, dim=-1)
        return F.silu(gate) * up
    check(swiglu, plain, h)


def test_saved_tensors_are_only_what_backward_needs():
    x = torch.randn(1, 2, 4, 8, requires_grad=True)
    cos, sin = torch.randn(1, 1, 4, 8).cos(), torch.randn(1, 1, 4, 8).sin()
    y = rotary(x, cos, sin)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 2 and all(t.requires_grad is False for t in saved)
    h = torch.randn(3, 10, requires_grad=True)
    assert len(swiglu(h).grad_fn.saved_tensors) == 1
