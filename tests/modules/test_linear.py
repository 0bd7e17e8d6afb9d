import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.modules.linear import (ONEDNN_LINEAR, ONEDNN_MAX_ROWS, SPLIT_GEMV_MAX_WEIGHTS, Linear, linear,
                                      split_gemv, weight_blocks)
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
        assert "mkldnn::_linear_pointwise" in ops_run(lambda: linear(x[:1], w[:15]))  # 15 rows: no even split
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(x[:1, None].expand(1, 3, 8), w))  # a prompt
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(torch.randn(ONEDNN_MAX_ROWS + 1, 8), w))
        assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(x.double(), w.double()))
    assert "mkldnn::_linear_pointwise" not in ops_run(lambda: linear(x, w))  # autograd on: F.linear


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("layout", ["row", "column"])
@pytest.mark.parametrize("shape", [(1, 24), (1, 1, 24)])
def test_split_gemv_is_f_linear(k, layout, shape):
    g = torch.Generator().manual_seed(k)
    w = torch.randn(36, 24, generator=g)
    w = column_major(w) if layout == "column" else w
    b, x = torch.randn(36, generator=g), torch.randn(shape, generator=g)
    blocks = weight_blocks(w, k)
    assert blocks.shape == (k, 24, 36 // k) and blocks.data_ptr() == w.data_ptr()  # a view: no copy
    for bias in (None, b):
        got = split_gemv(x, blocks, bias)
        assert got.shape == (*shape[:-1], 36)
        torch.testing.assert_close(got, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)


def test_weights_that_do_not_split():
    w = torch.randn(36, 24)
    assert weight_blocks(w, 1) is None and weight_blocks(w, 5) is None  # one thread; 36 % 5
    assert weight_blocks(torch.randn(48, 24)[:, ::2], 2) is None  # neither row- nor column-major
    assert weight_blocks(torch.empty(2, SPLIT_GEMV_MAX_WEIGHTS // 2 + 1), 2) is None  # an LM head stays on oneDNN


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="the split GEMV is an x86 CPU decoding path")
def test_one_row_takes_the_split_gemv_on_every_thread_count():
    w, x = torch.randn(48, 8), torch.randn(1, 1, 8)
    threads = torch.get_num_threads()
    try:
        for n in (2, 3, 4):
            torch.set_num_threads(n)
            with torch.no_grad():
                ops = ops_run(lambda: linear(x, w))
                torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
            assert "aten::bmm" in ops and "mkldnn::_linear_pointwise" not in ops
        torch.set_num_threads(1)  # one thread: nothing to split across
        with torch.no_grad():
            assert "mkldnn::_linear_pointwise" in ops_run(lambda: linear(x, w))
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        assert "aten::bmm" not in ops_run(lambda: linear(torch.randn(2, 1, 8), w))  # two rows: oneDNN


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
