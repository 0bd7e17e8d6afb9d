"""linear_cross_entropy against the dense reference F.cross_entropy(F.linear(...))."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_peft.modules import chunked_loss
from nemo_peft.modules.chunked_loss import linear_cross_entropy


def reference(hidden, weight, labels):
    return F.cross_entropy(F.linear(hidden, weight).float().flatten(0, -2), labels.flatten(), ignore_index=-100)


# (chunk_elements, MAX_ROWS): one chunk; vocabulary chunks of 7 with a shorter last one (50 = 7 x 7 + 1)
# over row blocks of 4 (15 labelled rows: 4 + 4 + 4 + 3); row chunks of 1 for a trained head
@pytest.mark.parametrize("chunk_elements,max_rows", [(1 << 20, 4096), (28, 4), (3, 4096)])
@pytest.mark.parametrize("weight_trains", [False, True])
@pytest.mark.parametrize("scale", [2.0, 60.0])  # 60: logits in the hundreds, exp() overflows unless shifted
def test_loss_and_gradients_equal_the_dense_reference(weight_trains, chunk_elements, max_rows, scale,
                                                      monkeypatch):
    monkeypatch.setattr(chunked_loss, "MAX_ROWS", max_rows)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 16, generator=g) * scale
    weight = torch.randn(50, 16, generator=g)
    labels = torch.randint(0, 50, (2, 9), generator=g)
    labels[0, :3] = -100  # ignored rows get no gradient and do not count in the mean
    losses, grads = [], []
    for fn in (reference, lambda h, w, y: linear_cross_entropy(h, w, y, chunk_elements=chunk_elements)):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_(weight_trains)
        loss = fn(h, w, labels)
        (2.5 * loss).backward()  # a non-unit incoming gradient
        losses.append(loss.detach())
        grads.append((h.grad, w.grad))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-5)
    tol = 1e-6 * scale  # fp32 rounding of logits that grow with the scale
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=tol)
    assert grads[1][0][0, :3].abs().sum() == 0
    if weight_trains:
        torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=10 * tol)
    else:
        assert grads[1][1] is None


def test_frozen_head_walks_the_vocabulary_in_chunks_over_all_rows():
    # 1020 labelled rows of a 49152-word head: every row in one block, chunks of 4096 words
    assert chunked_loss.vocab_chunk(1020, 49152) == (1020, 4112)
    assert chunked_loss.vocab_chunk(10_000, 49152) == (chunked_loss.MAX_ROWS, 1024)
    assert chunked_loss.vocab_chunk(3, 50, chunk_elements=28) == (3, 9)


def test_default_chunk_is_small_on_a_cpu_and_large_on_an_accelerator(monkeypatch):
    # a 1B Llama's 128k head over 8k rows: 252 chunks at the CPU size, 16 at the accelerator's (kernel launches)
    assert chunked_loss.default_chunk_elements("cpu") == chunked_loss.CHUNK_ELEMENTS
    assert chunked_loss.default_chunk_elements("cuda") == chunked_loss.ACCELERATOR_CHUNK_ELEMENTS
    for elements, chunks in ((chunked_loss.CHUNK_ELEMENTS, 252), (chunked_loss.ACCELERATOR_CHUNK_ELEMENTS, 16)):
        block, width = chunked_loss.vocab_chunk(8184, 128256, elements)
        assert -(-8184 // block) * -(-128256 // width) == chunks
    seen, vocab_chunk = [], chunked_loss.vocab_chunk
    monkeypatch.setattr(chunked_loss, "vocab_chunk", lambda *a: seen.append(a[2]) or vocab_chunk(*a))
    hidden, weight, labels = torch.randn(2, 3, 8), torch.randn(10, 8), torch.randint(0, 10, (2, 3))
    linear_cross_entropy(hidden, weight, labels)  # no chunk_elements: the device's default
    assert seen == [chunked_loss.CHUNK_ELEMENTS]


def test_frozen_head_allocates_its_logits_once_for_the_whole_walk():
    # 6 chunks of 9 words over 3 rows (the last one 5 words): one [3 x 9] logits buffer, not one per chunk
    from torch.profiler import ProfilerActivity, profile
    hidden, weight = torch.randn(1, 3, 16, requires_grad=True), torch.randn(50, 16)
    labels = torch.randint(0, 50, (1, 3))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        linear_cross_entropy(hidden, weight, labels, chunk_elements=28)
    sizes = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
    assert sizes.count(3 * 9 * 4) == 1, sizes  # fp32 bytes of one full chunk's logits


def test_all_rows_ignored_gives_nan_like_cross_entropy():
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    labels = torch.full((2, 3), -100)
    loss = linear_cross_entropy(hidden, torch.randn(5, 4), labels)
    assert torch.isnan(loss) and torch.isnan(reference(hidden, torch.randn(5, 4), labels))


def test_bf16_autocast_is_close_to_the_reference():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(100, 32, generator=g) * 0.2
    labels = torch.randint(0, 100, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, labels, chunk_elements=16 * 100)
        ref = reference(hidden, weight, labels)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)
    ours.backward()
    assert hidden.grad is not None and hidden.grad.dtype == torch.float32


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="labels"):
        linear_cross_entropy(torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_elements must be at least 1"):
        linear_cross_entropy(torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(2, 3, dtype=torch.long),
                             chunk_elements=0)


@pytest.mark.parametrize("arch", ["gpt", "t5_tied_scaled", "t5_untied"])
def test_model_lm_loss_equals_cross_entropy_of_its_logits(arch):
    from nemo_peft.models.t5 import T5Config, T5Model
    from tests.conftest import make_model

    torch.manual_seed(0)
    if arch == "gpt":
        model = make_model("qwen2")  # untied output layer
    else:
        model = T5Model(T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                 tie_word_embeddings=arch == "t5_tied_scaled"))
    hidden = torch.randn(3, 5, model.output_weight().shape[1], requires_grad=True)
    labels = torch.randint(0, 97, (3, 5))
    labels[1] = -100
    ours = model.lm_loss(hidden, labels)
    ref = F.cross_entropy(model.logits(hidden).float().flatten(0, 1), labels.flatten())
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    g_ours, = torch.autograd.grad(ours, hidden)
    g_ref, = torch.autograd.grad(ref, hidden)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), vocab=st.integers(2, 40), chunk_elements=st.integers(1, 200),
       max_rows=st.integers(1, 8), ignored=st.integers(0, 12), weight_trains=st.booleans(), seed=st.integers(0, 99))
def test_any_chunking_gives_the_dense_loss_and_gradient(rows, vocab, chunk_elements, max_rows, ignored,
                                                        weight_trains, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, 8, generator=g) * 3
    weight = torch.randn(vocab, 8, generator=g)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[:min(ignored, rows - 1)] = -100  # at least one labelled row
    old = chunked_loss.MAX_ROWS
    chunked_loss.MAX_ROWS = max_rows  # (hypothesis and pytest's monkeypatch do not mix per example)
    try:
        results = []
        for fn in (reference, lambda h, w, y: linear_cross_entropy(h, w, y, chunk_elements=chunk_elements)):
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_(weight_trains)
            loss = fn(h, w, labels)
            loss.backward()
            results.append((loss.detach(), h.grad, w.grad))
    finally:
        chunked_loss.MAX_ROWS = old
    (l_ref, gh_ref, gw_ref), (l, gh, gw) = results
    torch.testing.assert_close(l, l_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-4, atol=1e-5)
    if weight_trains:
        torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-5)
