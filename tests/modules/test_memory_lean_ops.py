"""The memory-lean RoPE and SwiGLU against the plain ops: same values, same gradients."""
import pytest
import torch
import torch.nn.functional as F

from nemo_peft.modules.memory_lean_ops import rotary, swiglu


def plain_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def check(fn, ref, *inputs):
    g = torch.Generator().manual_seed(0)
    a = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    b = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out, expected = fn(*a), ref(*b)
    assert torch.equal(out, expected)  # forward computes exactly what the plain ops do
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    (expected * w).sum().backward()
    assert a[0].grad is not None
    torch.testing.assert_close(a[0].grad, b[0].grad, rtol=1e-6, atol=1e-6)


def test_rotary_matches_the_plain_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 8, generator=g, requires_grad=True)
    angles = torch.randn(2, 1, 5, 8, generator=g)
    check(rotary, plain_rotary, x, angles.cos(), angles.sin())


@pytest.mark.parametrize("grad", [True, False])
def test_rotary_of_q_and_k_heads_of_a_projection_is_exact(grad):
    """As attention calls it: x the [B, T, q + k heads, D] part of a [B, T, q + k + v heads, D] projection
    (not contiguous), cos/sin [B, T, 1, D] over the heads, one decoded position or a sequence, with and
    without autograd; the output is dense [B, T, heads, D] and its gradient is the plain formula's."""
    g = torch.Generator().manual_seed(3)
    for t in (1, 6):
        proj = torch.randn(2, t, 5, 8, generator=g, requires_grad=grad)
        x = proj[:, :, :3]
        angles = torch.randn(2, t, 1, 8, generator=g)
        with torch.set_grad_enabled(grad):
            out = rotary(x, angles.cos(), angles.sin())
            expected = plain_rotary(x, angles.cos(), angles.sin())
        assert out.is_contiguous() and out.shape == x.shape
        assert torch.equal(out, expected)
        if grad:
            w = torch.randn(out.shape, generator=g)
            got, = torch.autograd.grad((out * w).sum(), proj)
            want, = torch.autograd.grad((expected * w).sum(), proj)
            assert torch.equal(got, want)


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
