"""Cross-entropy of an LM head without the full logits: ``linear_cross_entropy(hidden, weight, labels)``.

The logits of N tokens over a 50k vocabulary are N x 50k floats, kept by autograd together with
their log-softmax (hundreds of MB for a 4 x 256 batch). Here the head runs on ``chunk_size`` rows
at a time (a chunk's logits are the one large buffer), and each chunk's gradients (w.r.t. the
hidden states and, if it trains, the head weight) are computed right away in forward, so no chunk
outlives its loop iteration; backward only scales them by the incoming gradient. Rows labelled ``ignore_index`` never reach the head.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100  # label value the loss skips (e.g. padding); F.cross_entropy's default ignore_index
CHUNK_ELEMENTS = 1 << 23  # logits per chunk by default: 32 MiB in fp32, still large matmuls


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast would give this matmul (the tensor's own when autocast is off)."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size: int, ignore_index: int):
        shape, flat, flat_labels = hidden.shape, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
        rows = (flat_labels != ignore_index).nonzero().squeeze(1)
        n = rows.numel()
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        grad_hidden = torch.zeros(flat.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if weight.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            idx = rows[start:start + chunk_size]
            h = flat.index_select(0, idx).to(dtype)
            y = flat_labels.index_select(0, idx)
            # one [chunk, V] buffer: logits, then exp(logits - max), then the softmax, all in place
            probs = (h @ w.T).float()
            target = probs.gather(1, y[:, None])
            peak = probs.amax(dim=1, keepdim=True)
            total_exp = probs.sub_(peak).exp_().sum(dim=1, keepdim=True)
            total += (total_exp.log() + peak - target).sum()  # log-sum-exp minus the target's logit
            grad = probs.div_(total_exp)
            grad[torch.arange(len(idx), device=grad.device), y] -= 1.0
            grad = grad.div_(max(n, 1)).to(dtype)
            grad_hidden.index_copy_(0, idx, (grad @ w).float())
            if grad_weight is not None:
                grad_weight += (grad.T @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight if grad_weight is not None else torch.empty(0))
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
                         chunk_size: int | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` ([..., V] logits, never formed whole) against
    ``labels`` (same leading shape as ``hidden``), skipping ``ignore_index``; equal to
    ``F.cross_entropy(F.linear(hidden, weight).float().flatten(0, -2), labels.flatten())``.
    Under autocast the head's matmuls run in the autocast dtype, the softmax in fp32."""
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must match hidden {tuple(hidden.shape)} without its "
                         "last dimension.")
    if chunk_size is None:  # rows whose fp32 logits fill CHUNK_ELEMENTS (about 32 MiB), at least 64
        chunk_size = max(64, CHUNK_ELEMENTS // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, labels, int(chunk_size), int(ignore_index))
