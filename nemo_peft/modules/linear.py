"""The base model's linear layer: ``nn.Linear``, except that decoding steps run through oneDNN.
Decoding multiplies one position per row (1 row for batch-1 decoding, 25 for exact-match evaluation's
batches) by every weight. MKL, PyTorch's CPU BLAS, is slow at those shapes on the AMD EPYC machines seen
here: [25, 576] x [576, 3072] ran at ~60 GFLOP/s against ~150 at 1024 rows, the 25-row LM head at 30-40,
and one row (a GEMV) streamed the model's weights at ~18 GB/s against ~31 GB/s for a plain read.
oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, what inductor's CPU backend calls) ran the
batched products 1.1 to 2x faster (25-prompt generation 1.19x end to end) and the GEMVs at ~24 GB/s
(the LM head at ~42; batch-1 decoding 26.4 against 23.4 tok/s), in paired runs (README, Benchmarks).
Whole sequences (prefill, training, scoring) stay on MKL, which was as fast or faster there. Values are
the same products summed in another order.
Only for fp32 plain tensors on an x86 CPU without autograd, outside ``torch.compile``.
"""
from __future__ import annotations

import platform

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MAX_ROWS = 64  # measured: up to 64 rows oneDNN won; prefill's ~1000 rows ran slower on it
ONEDNN_LINEAR = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
                 and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def decode_step_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """``x`` is one position of each of 1 to ONEDNN_MAX_ROWS rows ([B, 1, in] or [B, in]), fp32 on CPU.
    Whole sequences ([B, T, in], T > 1: prefill, scoring, evaluation loss) stay on MKL, so their
    logits are bitwise those of any other MKL-based implementation."""
    rows = x.numel() // max(x.shape[-1], 1)
    return (0 < rows <= ONEDNN_MAX_ROWS and (x.dim() == 2 or x.shape[-2] == 1)
            and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and type(weight) in (torch.Tensor, nn.Parameter))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; a decoding step without autograd on an x86 CPU goes through oneDNN."""
    if (ONEDNN_LINEAR and not torch.is_grad_enabled() and decode_step_on_cpu(x, weight)
            and not torch.compiler.is_compiling()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` computed by ``linear`` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
