"""Saved tensors rebuilt in backward: gradients bitwise those of the plain graph, the tensor not kept."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.modules.memory_lean_ops import rms_norm_fp32
from nemo_peft.modules.norm import RMSNorm
from nemo_peft.modules.recompute import rebuilt_in_backward
from nemo_peft.peft.lora import LoraPEFTConfig


def plain_graph():
    """Any outer saved-tensor hooks make ``rebuilt_in_backward`` stand aside: the plain graph."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)


def test_rebuilt_tensor_is_dropped_and_gradients_are_unchanged():
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(8)
    x = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    a0 = torch.randn(3, 8, generator=g)
    grads = []
    for lean in (True, False):
        a = a0.clone().requires_grad_()
        xi = x.detach().clone().requires_grad_()
        with (torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if not lean
              else torch.enable_grad()):
            n = norm(xi)
            with rebuilt_in_backward(n, lambda: norm(xi)):
                y = F.linear(n, a)  # saves n (as a 2-D view) for a's gradient
        ref = weakref.ref(n)
        del n
        gc.collect()
        assert (ref() is None) == lean  # kept by the plain graph only
        (y.sin().sum()).backward()
        grads.append((a.grad, xi.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_model_gradients_bitwise_equal_with_and_without_rebuilding():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(num_layers=2, num_attention_heads=4, num_query_groups=2))
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
                                     dim=4, lora_B_init_method="normal"))
    ids = torch.randint(0, 256, (2, 12))
    labels = torch.randint(0, 256, (2, 12))
    runs = []
    for plain in (False, True):
        model.zero_grad(set_to_none=True)
        with plain_graph() if plain else torch.enable_grad():
            loss = model.lm_loss(model(ids, return_hidden=True), labels)
        loss.backward()
        runs.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) == 2 * 2 * 4  # A, B x 4 hosts x 2 layers
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float32, 1e-5)])
def test_rms_norm_saves_only_its_input_and_inverse_rms(dtype, tol):
    x = (torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(3)) * 4).to(dtype).requires_grad_()
    ref_x = x.detach().clone().requires_grad_()
    y = rms_norm_fp32(x, 1e-5)
    ref = F.rms_norm(ref_x.float(), (64,), eps=1e-5).to(dtype)
    assert y.dtype == dtype and torch.equal(y, ref)
    saved = y.grad_fn.saved_tensors  # x in its own dtype (no fp32 copy of a bf16 x) and the fp32 1/rms
    assert [(t.dtype, t.shape) for t in saved] == [(dtype, x.shape), (torch.float32, (3, 7, 1))]
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    (y * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad.float(), ref_x.grad.float(), rtol=tol, atol=tol)
    x64 = x.detach().double().requires_grad_()  # the exact gradient, in fp64
    (F.rms_norm(x64, (64,), eps=1e-5) * w.double()).sum().backward()
    ours_err = (x.grad.double() - x64.grad).abs().max()
    ref_err = (ref_x.grad.double() - x64.grad).abs().max()
    assert ours_err <= ref_err * 1.01 + 1e-6  # as close to exact as the plain graph
