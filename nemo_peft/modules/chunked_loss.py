"""Cross-entropy of an LM head without the full logits: ``linear_cross_entropy(hidden, weight, labels)``.

The logits of N tokens over a 50k vocabulary are N x 50k floats, kept by autograd together with
their log-softmax (hundreds of MB for a 4 x 256 batch). Here no more than ``chunk_elements`` logits
exist at a time, and the gradients (w.r.t. the hidden states and, if it trains, the head weight) are
computed right away in forward, so no chunk outlives its loop iteration; backward only scales them
by the incoming gradient. Rows labelled ``ignore_index`` never reach the head.

A frozen head (the PEFT case) is walked in vocabulary chunks over all labelled rows at once, so both
of its matmuls keep every row (a tall [rows, hidden] x [hidden, chunk] GEMM runs nearer the machine's
peak than a short one over the whole vocabulary). The softmax is then taken online, as flash
attention does: a running max and sum of exponentials per row, and the probability-weighted sum of
head rows rescaled whenever the max grows. A trained head needs each chunk's normalised softmax for
its own gradient, so it is walked in row chunks over the whole vocabulary instead.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label value the loss skips (e.g. padding); F.cross_entropy's default ignore_index
CHUNK_ELEMENTS = 1 << 22  # logits per chunk by default on a CPU: 16 MiB in fp32, still large matmuls
# On a GPU a 16 MiB chunk's matmul takes ~20 us of tensor-core time, less than launching its dozen kernels:
# a 1B Llama's 128k vocabulary over 8k rows was 252 chunks, ~3,000 launches, and the step waited on the host
# (H200, measured). 256 MiB chunks make that 16 (HF's unchunked loss holds 4 GiB of fp32 logits there).
ACCELERATOR_CHUNK_ELEMENTS = 1 << 26
MAX_ROWS = 4096  # rows per block of the vocabulary walk: bounds the running sums and keeps chunks wide


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give this matmul (the tensor's own when autocast is off)."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def default_chunk_elements(device: torch.device | str) -> int:
    """Logits held at a time when the caller does not say: small on a CPU (cache, fresh pages), large on
    an accelerator (fewer kernel launches)."""
    return CHUNK_ELEMENTS if torch.device(device).type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS


def vocab_chunk(rows: int, vocab: int, chunk_elements: int = CHUNK_ELEMENTS) -> tuple[int, int]:
    """(rows per block, vocabulary entries per chunk) of a frozen head's walk over ``rows`` labelled rows."""
    block = max(1, min(rows, MAX_ROWS))
    return block, max(1, min(vocab, chunk_elements // block))


def _frozen_head_block(h, y, weight, dtype, width):
    """Summed loss and the hidden-state gradient (fp32, unscaled by the row count) of rows ``h`` with
    labels ``y``, walking ``weight`` in chunks of ``width`` rows with an online softmax."""
    rows = h.shape[0]
    h = h.to(dtype)
    w_target = weight.index_select(0, y).to(dtype).float()  # the labels' head rows, as the matmuls see them
    target = (h.float() * w_target).sum(1, keepdim=True)  # each row's logit of its label
    peak = torch.full((rows, 1), float("-inf"), device=h.device)
    total_exp = torch.zeros((rows, 1), device=h.device)
    weighted = torch.zeros(h.shape, dtype=torch.float32, device=h.device)  # sum_v exp(logit_v - peak) w_v
    # The one large buffer (logits, then their exp, in place), allocated once for the whole walk: a
    # fresh 16 MiB tensor per chunk is fresh pages from the OS each time (faulted in and zeroed).
    buffer = torch.empty(rows * width, dtype=torch.float32, device=h.device)  # width <= vocab (vocab_chunk)
    for start in range(0, weight.shape[0], width):
        w = weight[start:start + width].to(dtype)
        logits = buffer[:rows * w.shape[0]].view(rows, w.shape[0])
        if dtype == torch.float32:
            torch.mm(h, w.T, out=logits)
        else:
            logits.copy_(h @ w.T)
        new_peak = torch.maximum(peak, logits.amax(dim=1, keepdim=True))
        rescale = (peak - new_peak).exp_()  # earlier sums were taken against a smaller max
        e = logits.sub_(new_peak).exp_()
        total_exp.mul_(rescale).add_(e.sum(dim=1, keepdim=True))
        weighted.mul_(rescale)
        if dtype == torch.float32:  # accumulate inside the GEMM (addmm, not addmm_: FLOP counters see it)
            torch.addmm(weighted, e, w, out=weighted)
        else:
            weighted.add_((e.to(dtype) @ w).float())
        peak = new_peak
    loss = (total_exp.log() + peak - target).sum()  # log-sum-exp minus the target's logit
    return loss, weighted.div_(total_exp).sub_(w_target)  # softmax-weighted rows minus the target's


def _trained_head_chunk(h, y, w, dtype, grad_weight):
    """Summed loss and hidden-state gradient of rows ``h`` over the whole vocabulary; adds the head's
    gradient (unscaled) into ``grad_weight``."""
    h = h.to(dtype)
    probs = (h @ w.T).float()  # one [chunk, V] buffer: logits, then exp(logits - max), then the softmax
    target = probs.gather(1, y[:, None])
    peak = probs.amax(dim=1, keepdim=True)
    total_exp = probs.sub_(peak).exp_().sum(dim=1, keepdim=True)
    loss = (total_exp.log() + peak - target).sum()
    grad = probs.div_(total_exp)
    grad[torch.arange(len(y), device=grad.device), y] -= 1.0
    grad = grad.to(dtype)
    grad_weight += (grad.T @ h).float()
    return loss, (grad @ w).float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_elements: int, ignore_index: int):
        shape, flat, flat_labels = hidden.shape, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        rows = (flat_labels != ignore_index).nonzero().squeeze(1)
        n = rows.numel()
        dtype = _compute_dtype(hidden)
        grad_hidden = torch.zeros(flat.shape, dtype=torch.float32, device=hidden.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if weight.requires_grad:
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            w = weight.to(dtype)
            step = max(1, chunk_elements // weight.shape[0])
            chunk = lambda h, y: _trained_head_chunk(h, y, w, dtype, grad_weight)  # noqa: E731
        else:
            grad_weight = None
            step, width = vocab_chunk(n, weight.shape[0], chunk_elements)
            chunk = lambda h, y: _frozen_head_block(h, y, weight, dtype, width)  # noqa: E731
        for start in range(0, n, step):
            idx = rows[start:start + step]
            loss, grad = chunk(flat.index_select(0, idx), flat_labels.index_select(0, idx))
            total += loss
            grad_hidden.index_copy_(0, idx, grad)
        scale = 1.0 / max(n, 1)  # the mean over labelled rows
        ctx.save_for_backward(grad_hidden.mul_(scale),
                              grad_weight.mul_(scale) if grad_weight is not None else torch.empty(0))
        ctx.shape, ctx.hidden_dtype, ctx.weight_dtype = shape, hidden.dtype, weight.dtype
        ctx.has_weight_grad = grad_weight is not None
        if n == 0:
            return total + float("nan")  # the mean of nothing, as F.cross_entropy gives
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = (grad_hidden * grad_out).to(ctx.hidden_dtype).reshape(ctx.shape)
        gw = (grad_weight * grad_out).to(ctx.weight_dtype) if ctx.has_weight_grad else None
        return gh, gw, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk_elements: int | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` ([..., V] logits, never formed whole) against
    ``labels`` (same leading shape as ``hidden``), skipping ``ignore_index``; equal to
    ``F.cross_entropy(F.linear(hidden, weight).float().flatten(0, -2), labels.flatten())``.
    ``chunk_elements``: logits held at a time (default: ``default_chunk_elements`` of the hidden states'
    device). Under autocast the head's matmuls run in the autocast
    dtype, the softmax in fp32."""
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must match hidden {tuple(hidden.shape)} without its "
                         "last dimension.")
    if chunk_elements is None:
        chunk_elements = default_chunk_elements(hidden.device)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be at least 1, got {chunk_elements}.")
    return _LinearCrossEntropy.apply(hidden, weight, labels, int(chunk_elements), int(ignore_index))
