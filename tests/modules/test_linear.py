import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.modules.linear import (ONEDNN_LINEAR, ONEDNN_MAX_ROWS, SPLIT_GEMV_MAX_WEIGHTS, Linear, linear,
                                      split_gemv, weight_blocks)
from nemo_peft.modules import linear as linear_module
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
def test_decode_steps_without_autograd_take_onednn_and_the_rest_the_blas(monkeypatch):
    monkeypatch.setattr(linear_module, "ONEDNN_GEMM", False)  # whole sequences on MKL (AVX2-only CPUs)
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


@pytest.fixture
def onednn_gemm(monkeypatch):
    """Whole-sequence products on oneDNN whatever this CPU's kernels (the default on AVX-512 only)."""
    if not ONEDNN_LINEAR:
        pytest.skip("oneDNN's linear is used on x86 CPUs only")
    monkeypatch.setattr(linear_module, "ONEDNN_GEMM", True)


@pytest.mark.parametrize("layout", ["row", "column"])
@pytest.mark.parametrize("shape", [(6, 24), (2, 5, 24)])
def test_training_products_with_a_frozen_weight_equal_f_linear(onednn_gemm, layout, shape):
    g = torch.Generator().manual_seed(7)
    w = torch.randn(40, 24, generator=g)
    w = column_major(w) if layout == "column" else w
    b, x, dy = torch.randn(40, generator=g), torch.randn(*shape, generator=g), torch.randn(*shape[:-1], 40, generator=g)
    lora_h, lora_b = torch.randn(*shape[:-1], 3, generator=g), torch.randn(3, 40, generator=g)
    runs = []
    for fn in (linear, F.linear):
        xi = x.clone().requires_grad_()
        y = fn(xi, w, b)
        assert fn is F.linear or not y._is_view()  # an in-place LoRA add into a view: zero-fill and copies in backward
        y = y.addmm_(lora_h, lora_b) if y.dim() == 2 else y.baddbmm_(lora_h, lora_b.expand(shape[0], 3, 40))
        y.backward(dy)
        runs.append((y.detach(), xi.grad))
        assert ("Frozen" in type(y.grad_fn.next_functions[0][0]).__name__) == (fn is linear)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["row", "column"])
def test_compiled_products_with_a_frozen_weight_take_onednn_and_equal_f_linear(onednn_gemm, layout):
    """Under torch.compile the frozen products are one opaque oneDNN operator (inductor would lower F.linear
    to MKL); a trained weight keeps F.linear, whose weight gradient the operator would not give."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 24, generator=g)
    w = column_major(w) if layout == "column" else w
    b, x, dy = torch.randn(40, generator=g), torch.randn(2, 5, 24, generator=g), torch.randn(2, 5, 40, generator=g)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w: linear(x, w, b).sin(), fullgraph=True)
    runs = []
    for fn in (compiled, lambda x, w: F.linear(x, w, b).sin()):
        xi = x.clone().requires_grad_()
        ops = ops_run(lambda: (runs.append(fn(xi, w)), runs[-1].backward(dy)))
        runs.append(xi.grad)
        assert ("mkldnn::_linear_pointwise" in ops) == (fn is compiled)
    torch.testing.assert_close(runs[0], runs[2], rtol=1e-5, atol=1e-5)  # values
    torch.testing.assert_close(runs[1], runs[3], rtol=1e-5, atol=1e-5)  # input gradients
    trained = w.clone().requires_grad_()
    compiled(x, trained).sum().backward()
    torch.testing.assert_close(trained.grad, (torch.cos(F.linear(x, w, b)).reshape(-1, 40).t()
                                               @ x.reshape(-1, 24)), rtol=1e-4, atol=1e-4)


def test_only_frozen_fp32_training_products_take_onednn(onednn_gemm):
    w, x = torch.randn(16, 8), torch.randn(2, 5, 8, requires_grad=True)
    onednn = lambda fn: "mkldnn::_linear_pointwise" in ops_run(fn)  # noqa: E731
    assert onednn(lambda: linear(x, w).sum().backward())
    assert not onednn(lambda: linear(x, w.clone().requires_grad_()))  # a trained weight needs its gradient: F.linear
    assert not onednn(lambda: linear(x, w, torch.zeros(16, requires_grad=True)))  # so does a trained bias
    assert not onednn(lambda: linear(x.double(), w.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn(lambda: linear(x, w))  # autocast's casts are F.linear's
    linear_module.ONEDNN_GEMM = False
    assert not onednn(lambda: linear(x, w))


@pytest.mark.parametrize("layout", ["row", "column"])
def test_sequences_without_a_gradient_take_onednn_and_equal_f_linear(onednn_gemm, layout):
    """Prefill and scoring (no autograd), and a frozen product whose input needs no gradient (layer 0 after a
    frozen embedding): no autograd graph to record, so oneDNN's plain product."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 24, generator=g)
    w = column_major(w) if layout == "column" else w
    b, x = torch.randn(40, generator=g), torch.randn(2, 70, 24, generator=g)  # 140 rows: more than a decode step
    trained = w.clone().requires_grad_()
    cases = [(torch.no_grad, w), (torch.no_grad, trained), (torch.enable_grad, w)]
    for context, weight in cases:
        with context():
            ops = ops_run(lambda: linear(x, weight, b))
            got = linear(x, weight, b)
        assert "mkldnn::_linear_pointwise" in ops and got.grad_fn is None and not got._is_view()
        torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_a_lora_training_step_equals_the_blas_path(onednn_gemm):
    """Loss and every LoRA gradient of a model whose frozen products run on oneDNN equal the same step on
    F.linear (MKL), within fp32 rounding."""
    from nemo_peft.peft.lora import LoraPEFTConfig
    from tests.helpers import make_model
    runs = []
    for on in (True, False):
        linear_module.ONEDNN_GEMM = on
        model = make_model("llama", num_layers=2)
        model.add_adapter(LoraPEFTConfig(dim=4, alpha=8, lora_B_init_method="normal"))
        model.train()
        ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            loss = model.lm_loss(model(ids, return_hidden=True), ids.roll(-1, dims=1))
            loss.backward()
        assert ("mkldnn::_linear_pointwise" in {e.key for e in prof.key_averages()}) == on
        runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    assert runs[0][1].keys() == runs[1][1].keys() and runs[0][1]
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(grad, runs[1][1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.skipif(not ONEDNN_LINEAR, reason="oneDNN's linear is used on x86 CPUs only")
def test_environment_variable_chooses_the_sequences_library():
    import os, subprocess, sys
    code = "from nemo_peft.modules import linear; print(linear.ONEDNN_GEMM)"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, "NEMO_PEFT_ONEDNN_GEMM": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected
    with pytest.raises(ValueError, match=r"NEMO_PEFT_ONEDNN_GEMM='yes': use 0 \(MKL\), 1 \(oneDNN\)"):
        linear_module._onednn_gemm("yes")
