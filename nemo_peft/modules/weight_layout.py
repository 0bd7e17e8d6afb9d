"""Base linear weights kept column-major: the logical shape stays [out, in], the memory is [in, out].

A batch-1 decode step is a chain of GEMVs that read every weight once, so its speed is the speed at
which BLAS streams the weights. ``x @ W.T`` over a row-major [out, in] weight reads rows of ``in``
floats (576 for SmolLM2) and reaches about 16 GB/s on 2 cores of the CPUs seen so far; over the same
weight stored [in, out] it is one row-major GEMM whose rows are ``out`` floats long, and reaches 22 to
26 GB/s (benchmarks/roofline.py measures both): decode is ~20% faster. oneDNN, which now runs decoding's
products (modules/linear.py), also streams column-major weights faster: the 30 layers' weights of SmolLM2
in 17.6 against 19.3 ms, the LM head in 2.7 against 3.2 ms (AMD EPYC, 2 cores). Training GEMMs ([tokens, in] x
[in, out] instead of x [out, in]^T) run at the same speed either way, and values are those of the same
products (only BLAS's summation order may differ). ``F.linear`` accepts either layout, ``Tensor.to``
keeps it, and every file format stores the logical [out, in] tensor (writers call ``.contiguous()``).
FSDP2 shards contiguous parameters only, so a sharded model goes back to row-major first.
Column-major is for fp32 on CPU only: with bf16 (or fp16) weights oneDNN's reduced-precision kernels run
faster over row-major ones (batch-1 decode 40 vs 33 tok/s, batched generation 1.22 vs 1.32 s on an
AVX-512-bf16 CPU), and GPUs have no use for it; the models re-choose after every cast or move (``_apply``).
"""
from __future__ import annotations

import torch
from torch import nn


def is_column_major(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.stride() == (1, t.shape[0])


def wants_column_major(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 and t.device.type == "cpu"


def decode_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the layout its dtype and device decode fastest from (column-major: fp32 on CPU)."""
    return column_major(t) if wants_column_major(t) else t.contiguous()


def column_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` (2-D) with the same values and shape, stored column-major (no copy when it already is)."""
    return t if t.dim() != 2 or is_column_major(t) else t.t().contiguous().t()


def base_weights(model: nn.Module, output_weight: torch.Tensor | None = None) -> dict[str, nn.Parameter]:
    """Every base ``nn.Linear`` weight of ``model`` by its state-dict name, and ``output_weight`` (the LM
    head, when it is the tied word embedding) by its own. Adapter modules are not base weights."""
    out = {f"{name}.weight": m.weight for name, m in model.named_modules()
           if isinstance(m, nn.Linear) and ".adapters." not in f".{name}."}
    out.update({name: p for name, p in model.named_parameters() if p is output_weight})
    return out


@torch.no_grad()
def store_base_weights_in_decode_layout(model: nn.Module, output_weight: torch.Tensor | None = None) -> None:
    """Store every ``base_weights`` tensor of ``model`` in ``decode_layout``, in place."""
    for p in base_weights(model, output_weight).values():
        _relayout(p)


class DecodeLayout:
    """Mixed into a model (before ``nn.Module``) that has ``output_weight()``: after every cast or move its
    base weights are re-stored in the layout the new dtype and device decode fastest from."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        store_base_weights_in_decode_layout(self, self.output_weight())
        return self


@torch.no_grad()
def store_weights_row_major(model: nn.Module) -> None:
    """Every parameter of ``model`` contiguous again (FSDP2's fully_shard accepts nothing else)."""
    for p in model.parameters():
        if not p.is_contiguous():
            p.data = p.data.contiguous()


def _relayout(p: nn.Parameter) -> None:
    # a model built on the meta device gets its layout after its weights are assigned; a sharded
    # parameter (FSDP2's DTensor) keeps the row-major layout it was sharded in
    if not p.is_meta and type(p.data) is torch.Tensor:
        p.data = decode_layout(p.data)
