"""The base model's linear layer: ``nn.Linear``, except that decoding steps run through oneDNN.
Decoding multiplies one position per row (1 row for batch-1 decoding, 25 for exact-match evaluation's
batches) by every weight. MKL, PyTorch's CPU BLAS, is slow at those shapes on the AMD EPYC machines seen
here: [25, 576] x [576, 3072] ran at ~60 GFLOP/s against ~150 at 1024 rows, the 25-row LM head at 30-40,
and one row (a GEMV) streamed the model's weights at ~18 GB/s against ~31 GB/s for a plain read.
oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``, what inductor's CPU backend calls) ran the
batched products 1.1 to 2x faster (25-prompt generation 1.19x end to end) and the GEMVs at ~24 GB/s
(the LM head at ~42; batch-1 decoding 26.4 against 23.4 tok/s), in paired runs (README, Benchmarks).
Whole sequences (a training step's forward and input gradient with a frozen fp32 weight; prefill and
scoring without autograd) go through oneDNN where ATen runs AVX-512 kernels: there it ran them ~15-60%
faster than MKL (~170-190 against ~105-150 GFLOP/s at prefill's 150-470 rows; the benchmark step 2-10%
faster in six alternating fresh-process pairs); on the AVX2-only kind MKL was as fast or faster at ~1000
rows, so there they stay on MKL. Values are the same products summed in another order.
A single row (batch-1 decoding) times a layer's weight goes one step further: ``split_gemv`` cuts the
weight into one block of output rows per thread and multiplies them in one batched product, which
streams the blocks side by side and skips oneDNN's per-call setup (~25 us a call against ~12 here).
Batch-1 decoding of the default model took 41.1 against 43.3 and 41.9 against 45.4 ms a token in
alternating runs, same tokens. The LM head keeps oneDNN, which streams that one large matrix faster.
The decoding paths are only for fp32 plain tensors on an x86 CPU without autograd, outside ``torch.compile``.
Under ``torch.compile`` (``model.compile=true``) the whole-sequence products with a frozen weight stay on oneDNN as
one opaque operator (``onednn_frozen_linear``): the compiled benchmark step's matmuls ran at ~195 against MKL's ~178
GFLOP/s, the step 3.88 against 4.14 s (medians of four alternating fresh-process pairs).
"""
from __future__ import annotations

import os, platform
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MAX_ROWS = 64  # measured: up to 64 rows oneDNN won (AVX2 and AVX-512); ~1000 rows only on AVX-512
SPLIT_GEMV_MAX_WEIGHTS = 8_000_000  # layer weights (<= 3072 x 576 here) split; a 49152 x 576 LM head did not gain
ONEDNN_LINEAR = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
                 and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
# Whole-sequence products ([1024, 576..1536] x [.., 576..3072] in the benchmark step, forward and input gradient;
# prefill's 150-470 rows) ran at ~170-205 GFLOP/s on oneDNN against MKL's ~105-175 (2 threads, AMD EPYC with
# AVX-512); on the AVX2-only kind MKL was as fast or faster at ~1000 rows, so there they stay on MKL.
# Env NEMO_PEFT_ONEDNN_GEMM=0/1 overrides.
def _onednn_gemm(setting: str) -> bool:
    """Whether whole-sequence products go through oneDNN: ``setting`` is NEMO_PEFT_ONEDNN_GEMM ("" = by CPU)."""
    if setting not in ("", "0", "1"):
        raise ValueError(f"NEMO_PEFT_ONEDNN_GEMM={setting!r}: use 0 (MKL), 1 (oneDNN), or leave it unset "
                         "(oneDNN where ATen runs AVX-512 kernels).")
    auto = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return ONEDNN_LINEAR and (auto if setting == "" else setting == "1")


ONEDNN_GEMM = _onednn_gemm(os.environ.get("NEMO_PEFT_ONEDNN_GEMM", ""))


def decode_step_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """``x`` is one position of each of 1 to ONEDNN_MAX_ROWS rows ([B, 1, in] or [B, in]), fp32 on CPU.
    Whole sequences ([B, T, in], T > 1: prefill, scoring, evaluation loss) are ``sequence_product_on_cpu``'s."""
    rows = x.numel() // max(x.shape[-1], 1)
    return (0 < rows <= ONEDNN_MAX_ROWS and (x.dim() == 2 or x.shape[-2] == 1)
            and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and type(weight) in (torch.Tensor, nn.Parameter))


def weight_blocks(weight: torch.Tensor, k: int) -> torch.Tensor | None:
    """``weight`` [out, in] as k blocks of out/k output rows, [k, in, out/k] (a view, no copy), or None
    when it does not split evenly, is LM-head sized (oneDNN streams those faster) or is neither row- nor
    column-major."""
    out_f, in_f = weight.shape
    if k < 2 or out_f % k or weight.numel() > SPLIT_GEMV_MAX_WEIGHTS:
        return None
    if weight.is_contiguous():
        return weight.view(k, out_f // k, in_f).transpose(1, 2)
    if weight.t().is_contiguous():  # column-major (modules/weight_layout.py)
        return weight.t().view(in_f, k, out_f // k).transpose(0, 1)
    return None


def split_gemv(x: torch.Tensor, blocks: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One row ``x`` [.., in] times the weight given as ``weight_blocks``: one batched product over the
    blocks, whose outputs laid end to end are the weight's outputs in order."""
    k, in_f, part = blocks.shape
    y = torch.bmm(x.reshape(1, 1, in_f).expand(k, 1, in_f), blocks).view(*x.shape[:-1], k * part)
    return y if bias is None else y.add_(bias)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through oneDNN (x86 CPUs; see ONEDNN_LINEAR)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``onednn_linear`` handed on as a plain tensor, as F.linear's is: oneDNN returns a [.., out] view of its
    2-D result, and an in-place LoRA add with a trained factor into a view would make autograd replay it
    as a zero-fill and copies of the whole output."""
    y = onednn_linear(x, weight, bias)
    return torch.ops.aten._unsafe_view(y._base if y._is_view() else y, y.shape)


class _FrozenLinearOneDNN(torch.autograd.Function):
    """``x W^T + b`` with a frozen ``W`` (and ``b``), forward and input gradient both through oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return onednn_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return onednn_linear(grad.contiguous(), weight.t()) if ctx.needs_input_grad[0] else None, None, None


@torch.library.custom_op("nemo_peft::onednn_frozen_linear", mutates_args=())
def onednn_frozen_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``onednn_product`` as an operator ``torch.compile`` keeps whole: inductor would lower F.linear to MKL,
    and cannot lower oneDNN's linear itself on unpacked weights. Its gradient is the input's only."""
    return onednn_product(x.contiguous(), weight, bias)


@onednn_frozen_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _frozen_linear_backward(ctx, grad):
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        raise RuntimeError("nemo_peft::onednn_frozen_linear is for frozen weights; a trained weight or bias "
                           "takes F.linear (modules/linear.py: linear).")
    (weight,) = ctx.saved_tensors
    return onednn_frozen_linear(grad, weight.t(), None) if ctx.needs_input_grad[0] else None, None, None


onednn_frozen_linear.register_autograd(_frozen_linear_backward,
                                       setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[1]))


def sequence_product_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A product of whole sequences with a plain fp32 weight on a CPU where ATen runs AVX-512 kernels,
    outside autocast (whether autograd needs it is ``linear``'s question)."""
    return (ONEDNN_GEMM and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and type(weight) in (torch.Tensor, nn.Parameter) and not torch.is_autocast_enabled("cpu"))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; a decoding step without autograd on an x86 CPU goes through oneDNN,
    or, for a single row times a layer's weight, through ``split_gemv``; on AVX-512 CPUs, whole sequences
    go through oneDNN too, unless autograd needs the weight's (or bias's) gradient."""
    grad = torch.is_grad_enabled()
    if (ONEDNN_LINEAR and not grad and decode_step_on_cpu(x, weight)
            and not torch.compiler.is_compiling()):
        blocks = weight_blocks(weight, torch.get_num_threads()) if x.numel() == x.shape[-1] else None
        if blocks is not None:
            return split_gemv(x, blocks, bias)
        return onednn_linear(x, weight, bias)
    if sequence_product_on_cpu(x, weight):
        frozen = not (weight.requires_grad or (bias is not None and bias.requires_grad))
        if torch.compiler.is_compiling():  # one opaque operator in the graph; a trained weight's gradient: F.linear
            return onednn_frozen_linear(x, weight, bias) if frozen or not grad else F.linear(x, weight, bias)
        if not grad or (frozen and not x.requires_grad):  # no autograd graph to record
            return onednn_product(x, weight, bias)
        if frozen:
            return _FrozenLinearOneDNN.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` computed by ``linear`` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
