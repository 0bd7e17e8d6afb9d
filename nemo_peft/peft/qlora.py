"""QLoRA: LoRA on a base whose linear weights are stored in 4-bit NormalFloat (NF4).

The NF4 storage and the dequantize-and-matmul come from ``torchao`` (an optional dependency:
``pip install nemo_peft[quant]``); it runs on CPU and CUDA. Each weight is cut into blocks of
``block_size`` values; a value is stored as the 4-bit index of the nearest of the 16 NF4 levels
after dividing by its block's absmax, two indices per byte. The block scales are kept

- ``double_quant=False``: as they are (one float per block; 4.5 bits per weight in fp32), or
- ``double_quant=True``: quantized again to int8 (torchao's NF4 format, as in the QLoRA paper;
  ~4.13 bits per weight).

Quantizing is part of building the adapters: ``QLoraPEFTConfig.build_adapters`` replaces each
host linear that it adapts (``quantize_base="targets"``) or every ``linear_qkv``/``linear_proj``/
``linear_fc1``/``linear_fc2`` (``"all"``) by an ``NF4Linear`` in its block. This is irreversible
(the full-precision weight is dropped), and adapters on a quantized host cannot be merged: fold a
trained QLoRA adapter into a full-precision copy of the base instead (``load_adapters`` there).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from torch import nn

from nemo_peft.peft.base import SlotContext, check_choice, check_flag, check_number, option_error, register
from nemo_peft.peft.dora import DoraAdapter
from nemo_peft.peft.lora import LoraAdapter, LoraPEFTConfig

QUANT_TYPES = ("nf4",)
QUANTIZE_BASE = ("targets", "all")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INSTALL_HINT = "pip install nemo_peft[quant]  (or: pip install torchao)"


@functools.lru_cache(maxsize=None)
def _torchao_nf4():
    """torchao's NF4 pieces, or an ImportError that says how to install them."""
    # torchao's import logs every CUDA kernel it cannot load on a CPU box, and torch a deprecation per enum
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        try:
            from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor as nf4  # torchao >= 0.17
        except ImportError:
            from torchao.dtypes import nf4tensor as nf4  # older torchao
        _ = (nf4.to_nf4, nf4.get_block_absmax)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"QLoRA stores base weights in 4-bit NF4 using torchao, which is not available "
                          f"({type(e).__name__}: {e}). Install it with: {INSTALL_HINT}") from e
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return nf4


def _scaler_block_size(n_blocks: int) -> int:
    """torchao double-quantizes the block scales in groups that must divide their number: the
    largest divisor of n_blocks up to 256 (the QLoRA paper's group size)."""
    return max(d for d in range(1, min(n_blocks, 256) + 1) if n_blocks % d == 0)


class _NF4Matmul(torch.autograd.Function):
    """x @ W.T with W dequantized on the fly, in forward and again in backward (for x's gradient):
    the full-precision weight lives only for one matmul. W is frozen, so it gets no gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "NF4Linear", dtype: torch.dtype) -> torch.Tensor:
        ctx.layer, ctx.dtype = layer, dtype
        return x @ layer.dequantize(dtype).T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantize(ctx.dtype).to(grad.dtype), None, None


class NF4Linear(nn.Module):
    """A frozen ``nn.Linear`` with its weight in 4-bit NF4 (torchao); the bias stays in full precision.

    Same ``in_features``/``out_features``/``bias`` as the linear it replaces; there is no dense
    ``.weight`` (``dequantize()`` makes a full-precision copy). Forward dequantizes for the matmul
    (and again in backward, for the input's gradient), so no full-precision weight is kept. Input
    is cast to ``compute_dtype`` (None: the input's dtype) and the output back to the input's dtype.

    ``scales`` (a frozen Parameter, in the original weight's dtype) is what ``parameters()``
    reports, so the module carries the model's dtype and device like the linear it replaced.
    """

    quantized = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, block_size: int = 64,
                 double_quant: bool = False, compute_dtype: torch.dtype | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        _torchao_nf4()
        numel = in_features * out_features
        if block_size <= 0 or block_size % 2 or numel % block_size:
            raise ValueError(
                f"NF4 block_size={block_size} must be even and divide the weight's {out_features}x{in_features}"
                f"={numel} values; pick a block_size that divides it (64 is standard), or leave this module "
                "unquantized (quantize_base='targets' with other targets).")
        self.in_features, self.out_features = in_features, out_features
        self.block_size, self.double_quant, self.compute_dtype = block_size, double_quant, compute_dtype
        self.n_blocks = numel // block_size
        self.scaler_block_size = _scaler_block_size(self.n_blocks) if double_quant else self.n_blocks
        kw = dict(device=device)
        if double_quant:  # torchao's format: int8 scales, one float factor per scaler block, a mean
            self.scales = nn.Parameter(torch.zeros(self.n_blocks // self.scaler_block_size, dtype=dtype, **kw),
                                       requires_grad=False)
            self.register_buffer("quantized_scalers", torch.zeros(self.n_blocks, dtype=torch.int8, **kw))
            self.register_buffer("scaler_mean", torch.zeros((), dtype=dtype, **kw))
        else:  # the exact absmax of every block
            self.scales = nn.Parameter(torch.zeros(self.n_blocks, dtype=dtype, **kw), requires_grad=False)
        self.register_buffer("quantized_data", torch.zeros(numel // 2, dtype=torch.uint8, **kw))
        self.register_buffer("nf4", _nf4_levels().to(device=device, dtype=dtype), persistent=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, **kw), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = False,
                    compute_dtype: torch.dtype | None = None) -> "NF4Linear":
        nf4 = _torchao_nf4()
        weight = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, block_size, double_quant,
                  compute_dtype, dtype=weight.dtype, device=weight.device)
        w32 = weight.float().contiguous()  # quantize from fp32 whatever the model's dtype
        q = nf4.to_nf4(w32, block_size, mod.scaler_block_size)
        mod.quantized_data.copy_(q.quantized_data)
        if double_quant:
            mod.scales.copy_(q.quantization_factor)
            mod.quantized_scalers.copy_(q.quantized_scalers)
            mod.scaler_mean.copy_(q.scaler_mean)
        else:
            mod.scales.copy_(nf4.get_block_absmax(w32.flatten(), block_size))
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach())
        return mod

    def block_scales(self, dtype: torch.dtype) -> torch.Tensor:
        """The absmax of every block, [n_blocks] (undoing the int8 double quantization, as torchao does)."""
        if not self.double_quant:
            return self.scales.to(dtype)
        scalers = self.quantized_scalers.view(-1, self.scaler_block_size) / self.scales.unsqueeze(-1)
        return scalers.flatten().to(dtype) + self.scaler_mean.to(dtype)

    @torch.no_grad()
    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A full-precision copy of the (quantized) weight, [out_features, in_features].

        Bit-equal to torchao's ``NF4Tensor.get_original_weight`` (level * block absmax), but one
        gather from a 256-entry table of value pairs (a byte holds two codes, high nibble first)
        instead of two gathers and an interleave: ~4x faster on CPU, where the dequantize is most of
        a QLoRA forward."""
        dtype = dtype or self.scales.dtype
        idx = torch.arange(256, device=self.nf4.device)
        pairs = torch.stack([self.nf4[idx >> 4], self.nf4[idx & 15]], -1).to(dtype)  # [256, 2]
        w = pairs.index_select(0, self.quantized_data.int()).view(self.n_blocks, self.block_size)
        return w.mul_(self.block_scales(dtype).unsqueeze(-1)).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype or x.dtype
        out = _NF4Matmul.apply(x.to(dtype), self, dtype)
        if self.bias is not None:
            out = out + self.bias.to(dtype)
        return out.to(x.dtype)

    def quantized_nbytes(self) -> int:
        """Bytes that hold the weight: 4-bit codes, scales (and their int8 form), the NF4 levels."""
        names = ["quantized_data", "scales", "nf4"]
        if self.double_quant:
            names += ["quantized_scalers", "scaler_mean"]
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in names)

    def __getattr__(self, name: str):
        if name == "weight":
            raise AttributeError(
                "NF4Linear keeps its weight quantized (4-bit NF4) and has no dense .weight; use .dequantize() "
                "for a full-precision copy. Merging adapters into a quantized layer is not supported.")
        return super().__getattr__(name)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"nf4(block_size={self.block_size}, double_quant={self.double_quant}, "
                f"compute_dtype={self.compute_dtype})")


@functools.lru_cache(maxsize=None)
def _nf4_levels_cached() -> torch.Tensor:
    # torchao keeps its 16 NF4 levels inside every NF4Tensor; read them off a tiny one
    return _torchao_nf4().to_nf4(torch.linspace(-1, 1, 64), 64, 1).nf4.float()


def _nf4_levels() -> torch.Tensor:
    return _nf4_levels_cached().clone()


class QLoraAdapter(LoraAdapter):
    """A LoRA adapter on a 4-bit host. It has no ``merge``: a quantized weight cannot absorb the
    update, so ``merge_adapters`` refuses it, with ``merge_refusal``, before touching any weight."""

    merge_refusal = ("QLoRA adapters cannot be merged: their host's weight is quantized (4-bit NF4). "
                     "Load the adapter into a full-precision base model and merge there.")

    @property
    def merge(self):
        raise AttributeError(self.merge_refusal)


@register("qlora", section="qlora_tuning")
@dataclass
class QLoraPEFTConfig(LoraPEFTConfig):
    """LoRA's options plus the 4-bit storage of the base linears (see the module docstring)."""

    # models/fsdp.py asks this: the packed 4-bit weights are buffers, which fully_shard leaves whole
    fsdp_unsupported = ("its 4-bit base weights are stored as packed uint8 buffers, which FSDP2's fully_shard does "
                        "not shard, so every process would hold the whole quantized base anyway.")

    adapter_class = QLoraAdapter
    quant_type: str = "nf4"  # torchao provides NF4
    double_quant: bool = False  # quantize the block scales to int8 too
    block_size: int = 64  # values per quantization block
    compute_dtype: str = "float32"  # float32 | bfloat16 | float16: the dtype of the dequantized matmul
    quantize_base: str = "targets"  # "targets": the adapted linears; "all": every host linear of every block

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "quant_type", QUANT_TYPES)  # torchao provides NF4
        check_choice(self, "compute_dtype", COMPUTE_DTYPES)
        check_choice(self, "quantize_base", QUANTIZE_BASE)
        check_number(self, "block_size", integer=True, at_least=2)
        if self.block_size % 2:
            raise option_error(self, "block_size", "must be even (64 is standard)")
        check_flag(self, "double_quant")

    def build_adapters(self, slots: list[SlotContext]):
        """LoRA's adapters, then the chosen host linears of the model become ``NF4Linear`` (in place, for good)."""
        _torchao_nf4()  # fail on a missing torchao before changing anything
        built = super().build_adapters(slots)
        hosts = {}
        for ctx in slots:
            if ctx.spec.kind == "lora" and (self.quantize_base == "all" or ctx.key in built):
                hosts[(ctx.path, ctx.spec.host)] = ctx
        todo = [(ctx, getattr(ctx.block, ctx.spec.host)) for ctx in hosts.values()]
        todo = [(ctx, h) for ctx, h in todo if not getattr(h, "quantized", False)]  # e.g. a second QLoRA adapter
        for ctx, host in todo:  # check every size first: quantize all or nothing
            if not isinstance(host, nn.Linear):
                raise TypeError(f"QLoRA can quantize nn.Linear hosts only; {ctx.host_path} is {type(host).__name__}.")
            numel = host.in_features * host.out_features
            if numel % self.block_size:
                raise ValueError(f"QLoRA block_size={self.block_size} does not divide the {numel} weights of "
                                 f"{ctx.host_path} ({host.out_features}x{host.in_features}); pick a block_size "
                                 "that does (a power of two such as 32 or 16).")
            slot = getattr(ctx.block, ctx.spec.name)  # other adapters already on this host
            dense = sorted({n for n, a in slot.adapters.items() if isinstance(a, DoraAdapter)} | slot.merged)
            if dense:  # quantizing under them would break every later forward (DoRA) or unmerge
                raise ValueError(f"QLoRA would quantize {ctx.host_path}, but adapter(s) {dense} there need its "
                                 "full-precision weight (DoRA reads it; a merged adapter is folded into it). "
                                 "Delete or unmerge them first, or use LoRA for this adapter.")
        compute = COMPUTE_DTYPES[self.compute_dtype]
        for ctx, host in todo:
            setattr(ctx.block, ctx.spec.host, NF4Linear.from_linear(host, self.block_size, self.double_quant, compute))
        return built
