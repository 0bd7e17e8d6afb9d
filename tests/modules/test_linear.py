import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.modules.linear import ONEDNN_LINEAR, ONEDNN_MAX_ROWS, Linear, linear
from nemo_peft.modules.weight_layout import column_major


def ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("rows", [1, 3, ONEDNN_MAX_ROWS, ONEDNN_MAX_ROWS + 1])
@pytest.mark.parametrize("layout", ["row", "column"])
def test_values_match_f_linear_on_every_path(rows, layout):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(40, 24, generator=g)
    w = column_major(w) if layout == "column" else w
    b, x = torch.randn(40, generator=g), torch.randn(1, rows, 24, generator=g)
    with torch.no_grad():
        got, ref = linear(x, w, b), F.linear(x, w, b)
    assert got.shape == ref.shape == (1, rows, 40)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # the same products, summed in another order


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="oneDNN's linear is used on x86 CPUs only")
def test_decode_steps_without_autograd_take_onednn_and_the_rest_the_blas():
    w, x = torch.randn(16, 8), torch.randn(5, 8)
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" in ops_run(lambda: linear(x, w))
        assert "mkldnn::_linear_pointwise" in ops_run(lambda: linear(x[:, None], w))  # [B, 1, in]
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(x[None], w))  # a sequence: MKL
        assert "mkldnn::_linear_pointwise" in ops_run(lambda: linear(x[:1], w))  # batch-1 decoding's GEMV
        assert "mkldnn::_linear_pointwise" in ops_run(lambda: linear(x[:1, None], w))
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(x[:1, None].expand(1, 3, 8), w))  # a prompt
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(torch.randn(ONEDNN_MAX_ROWS + 1, 8), w))
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(x.double(), w.double()))
    assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(x, w))  # autograd on: F.linear


def test_gradients_and_state_dict_are_nn_linears():
    torch.manual_seed(0)
    ours, ref = Linear(8, 6), nn.Linear(8, 6)
    ref.load_state_dict(ours.state_dict())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(4, 8, requires_grad=True)
    ours(x).square().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    ref(x).square().sum().backward()
    torch.testing.assert_close(gx, x.grad, rtol=0, atol=0)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0, atol=0)
