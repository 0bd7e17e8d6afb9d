"""LoRA: a low-rank update B·A beside a linear layer, scaled by alpha / dim.

On a fused host (``linear_qkv``, gated ``linear_fc1``) the adapter may cover only
some output parts (q and v, say). Each part p has its own A_p [r, in] and B_p
[size_p, r], exactly like separate LoRAs on separate q/k/v projections. We keep
all A_p stacked in one ``lora_a`` [P*r, in] (one matmul for every part) and all B_p
stacked in ``lora_b`` [sum(size_p), r]. B·A is never formed in forward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.core.slots import host_parts
from nemo_peft.peft import combine
from nemo_peft.peft.base import (PEFTConfig, SlotContext, check_choice, check_flag, check_layer_selection,
                                  check_number, is_number, option_error, register)
from nemo_peft.peft.targets import known_names_message, select_parts

INIT_METHODS = ("xavier", "kaiming", "normal", "zero")


def init_tensor(t: torch.Tensor, method: str) -> None:
    if method == "xavier":
        nn.init.xavier_normal_(t)
    elif method == "kaiming":
        nn.init.kaiming_uniform_(t, a=math.sqrt(5))  # nn.Linear's (and HF peft's) default
    elif method == "normal":
        nn.init.normal_(t, std=0.02)
    elif method == "zero":
        nn.init.zeros_(t)
    else:
        raise ValueError(f"Unknown init method {method!r}; choose one of {INIT_METHODS}.")


class LoraPart(NamedTuple):
    """Part p of a LoRA adapter: host output rows start..start+size, and views of its weights."""

    index: int
    start: int
    size: int
    a: torch.Tensor  # A_p [dim, in]
    b: torch.Tensor  # B_p [size, dim]


class LoraAdapter(nn.Module):
    """Adds scale * B_p · A_p · x to each chosen slice of the host's output.

    Only this class knows how the parts sit in the stacked ``lora_a``/``lora_b``; everything
    else reads them with ``parts()``/``part_weights(p)`` and writes them with ``write_part``."""

    def __init__(self, in_features: int, out_slices: list[tuple[int, int]], dim: int, alpha: float,
                 dropout: float = 0.0, dropout_position: str = "pre",
                 a_init: str = "xavier", b_init: str = "zero", use_rslora: bool = False):
        super().__init__()
        self.out_slices = list(out_slices)
        self.dim, self.alpha, self.use_rslora = dim, alpha, use_rslora
        self.scale = alpha / math.sqrt(dim) if use_rslora else alpha / dim  # rsLoRA: alpha / sqrt(r)
        self.lora_a = nn.Parameter(torch.empty(len(out_slices) * dim, in_features))
        self.lora_b = nn.Parameter(torch.empty(sum(size for _, size in out_slices), dim))
        for a in self.lora_a.data.split(dim):  # init each part on its own fan-in/out
            init_tensor(a, a_init)
        init_tensor(self.lora_b.data, b_init)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.dropout_position = dropout_position

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None and self.dropout_position == "pre":
            x = self.dropout(x)
        h = F.linear(x, self.lora_a)
        b = self.expanded_b(out.shape[-1])
        post_dropout = self.dropout is not None and self.dropout_position == "post"
        if post_dropout or out.dtype != h.dtype:  # (dtypes differ e.g. on a bf16 4-bit host)
            return out + self._post(F.linear(h * self.scale, b))
        # out + scale * h B^T inside the GEMM, into ``out`` itself: no product to allocate and add (the host's
        # matmul does not keep its output for backward, so updating it in place is safe)
        b_t, scale = b.t().to(h.dtype), self.scale
        rows, h_rows = out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1])
        if torch.compiler.is_compiling():  # inductor plans its own buffers; ``_is_view`` below would break the
            # graph, and the resumed graph's in-place update of its input crashed torch 2.13 (view replay)
            return torch.addmm(rows, h_rows, b_t, alpha=scale).view(out.shape)
        if not (torch.is_grad_enabled() and (out.requires_grad or h.requires_grad)):
            return rows.addmm_(h_rows, b_t, alpha=scale).view(out.shape)
        # under autograd never into a view of out (rows): backward would replay that as a zero-fill and
        # copies of the whole output (~6% of a SmolLM2 training step); a host output that is a view gets a new tensor
        if out._is_view() or out.dim() not in (2, 3):
            return torch.addmm(rows, h_rows, b_t, alpha=scale).view(out.shape)
        if out.dim() == 2:
            return out.addmm_(h, b_t, alpha=scale)
        return out.baddbmm_(h, b_t.expand(out.shape[0], -1, -1), alpha=scale)

    def expanded_b(self, out_features: int) -> torch.Tensor:
        """B as one [out_features, P*r] matrix: B_p in rows start_p.. and columns p*r.., zeros elsewhere.

        One matmul then adds every part's update (the zero blocks cost ~P*r/in of the host's
        flops); in-place adds into slices of the host output would cost a zero-fill and copies
        of the whole output in backward."""
        if len(self.out_slices) == 1 and self.out_slices[0] == (0, out_features):
            return self.lora_b
        if torch.is_grad_enabled() and self.lora_b.requires_grad:
            return self._build_expanded_b(out_features)
        # inference (e.g. each decoding step): build once per version of B (an optimizer step or a load bumps it)
        key = (self.lora_b._version, self.lora_b.data_ptr(), self.lora_b.dtype, out_features)
        if getattr(self, "_expanded_key", None) != key:
            with torch.no_grad():
                self._expanded, self._expanded_key = self._build_expanded_b(out_features), key
        return self._expanded

    def _build_expanded_b(self, out_features: int) -> torch.Tensor:
        b = self.lora_b.new_zeros(out_features, len(self.out_slices) * self.dim)
        for p, start, size, _, b_p in self.parts():  # rows of parts this adapter skips stay zero
            b[start:start + size, self.rank_slice(p)] = b_p
        return b

    def rank_slice(self, p: int) -> slice:
        """Part p's rows of ``lora_a``, i.e. its columns of the stacked hidden A·x."""
        return slice(p * self.dim, (p + 1) * self.dim)

    def part_weights(self, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_p [dim, in], B_p [size_p, dim]): views into ``lora_a``/``lora_b`` (autograd flows through)."""
        part = self.parts()[p]
        return part.a, part.b

    def parts(self) -> list[LoraPart]:
        """Every covered part, in the host's row order (views into ``lora_a``/``lora_b``)."""
        # two splits for all parts at once: a model merges hundreds of parts
        a_parts = self.lora_a.split(self.dim)
        b_parts = self.lora_b.split([size for _, size in self.out_slices])
        return [LoraPart(p, start, size, a, b)
                for p, ((start, size), a, b) in enumerate(zip(self.out_slices, a_parts, b_parts))]

    @torch.no_grad()
    def write_part(self, p: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Set part p to A [r, in], B [size_p, r] (any float dtype and device; cast on copy).

        A rank r < dim is zero-padded: the extra rank-1 terms are 0, so B·A is unchanged."""
        a_p, b_p = self.part_weights(p)
        r = a.shape[0]
        if r > self.dim or a.shape[1:] != a_p.shape[1:] or tuple(b.shape) != (b_p.shape[0], r):
            raise ValueError(f"Part {p} of this LoRA adapter takes A [r <= {self.dim}, {a_p.shape[1]}] and "
                             f"B [{b_p.shape[0]}, r]; got A {tuple(a.shape)} and B {tuple(b.shape)}.")
        a_p[:r].copy_(a)
        a_p[r:].zero_()
        b_p[:, :r].copy_(b)
        b_p[:, r:].zero_()

    def delta_weight(self) -> list[tuple[int, int, torch.Tensor]]:
        """(start, size, scale * B_p @ A_p) per part, in fp32 — for merging only."""
        return [(start, size, (b.float() @ a.float()) * self.scale) for _, start, size, a, b in self.parts()]

    @torch.no_grad()
    def merge(self, host: nn.Linear, sign: float = 1.0) -> None:
        """Fold the update into ``host.weight`` (sign=-1 takes it out again)."""
        check_mergeable(host)
        w = host.weight
        if w.dtype == torch.float32:  # one in-place rows += sign * scale * B_p @ A_p per part
            for _, start, size, a, b in self.parts():
                w[start:start + size].addmm_(b.to(w), a.to(w), alpha=sign * self.scale)
            return
        for start, size, delta in self.delta_weight():  # low precision: add in fp32, round once
            rows = host.weight[start:start + size]
            rows.copy_((rows.float() + sign * delta).to(rows.dtype))

    def _post(self, delta: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None and self.dropout_position == "post":
            return self.dropout(delta)
        return delta

    def extra_repr(self) -> str:
        return f"dim={self.dim}, alpha={self.alpha}, slices={self.out_slices}" + (", rslora" if self.use_rslora else "")


def check_mergeable(host: nn.Module) -> None:
    """A quantized host (QLoRA's ``NF4Linear``) has no dense weight to fold an update into."""
    if getattr(host, "quantized", False) or not isinstance(getattr(host, "weight", None), torch.Tensor):
        raise TypeError(
            f"Cannot merge an adapter into {type(host).__name__}: its weight is quantized (4-bit NF4, QLoRA), "
            "and merging is only supported for full-precision linears. Keep the adapter unmerged, or load the "
            "base model without quantization, add the adapter (load_adapters) and merge there.")


@register("lora", section="lora_tuning")
@dataclass
class LoraPEFTConfig(PEFTConfig):
    """LoRA in NeMo 2.0's terms (NeMo 1.x aliases accepted in configs)."""

    target_modules: list[str] = field(
        default_factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"]
    )
    dim: int = 32
    alpha: float = 32
    dropout: float = 0.0
    dropout_position: str = "pre"  # "pre": on the adapter input; "post": on its output
    lora_A_init_method: str = "xavier"
    lora_B_init_method: str = "zero"
    layer_selection: list[int] | None = None  # 1-based layer numbers; None = all layers
    use_rslora: bool = False  # rank-stabilized LoRA: scale = alpha / sqrt(dim) instead of alpha / dim
    # Per-module overrides of dim / alpha: {target: value}, each key a target name, wildcard or regex
    # matched like ``target_modules`` (on the host path, e.g. 'decoder.layers.0.self_attention.linear_qkv').
    # When several keys match one module, the later key wins. The parts of one fused host that share
    # an adapter (q and v of linear_qkv, say) share one A/B stack, so they must resolve to one value.
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None

    adapter_class: ClassVar[type[LoraAdapter]] = LoraAdapter  # what ``make_adapter`` builds (QLoRA: its own)
    aliases = {
        "adapter_dim": "dim",
        "adapter_dropout": "dropout",
        "column_init_method": "lora_A_init_method",
        "row_init_method": "lora_B_init_method",
    }

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        targets = list(self.target_modules) if hasattr(self.target_modules, "__iter__") else []
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise option_error(self, "target_modules", "name at least one module, each a non-empty string, "
                               "e.g. ['linear_qkv']")
        self.target_modules = targets
        check_number(self, "dim", integer=True, at_least=1)
        check_number(self, "alpha", above=0)
        check_number(self, "dropout", at_least=0, below=1)
        check_choice(self, "dropout_position", ("pre", "post"))
        check_choice(self, "lora_A_init_method", INIT_METHODS)
        check_choice(self, "lora_B_init_method", INIT_METHODS)
        check_flag(self, "use_rslora")
        check_layer_selection(self)
        self.rank_pattern = _check_pattern(self, "rank_pattern", int)
        self.alpha_pattern = _check_pattern(self, "alpha_pattern", float)

    def make_adapter(self, ctx: SlotContext, slices: list[tuple[int, int]], dim: int, alpha: float) -> nn.Module:
        """The adapter for one host: an ``adapter_class`` (DoRA, which needs the block too, overrides this)."""
        host = getattr(ctx.block, ctx.spec.host)
        return self.adapter_class(
            host.in_features, slices, dim, alpha, self.dropout, self.dropout_position,
            self.lora_A_init_method, self.lora_B_init_method, self.use_rslora,
        )

    @staticmethod
    def add_weighted_adapter(model, adapters, weights, new_name: str, activate: bool = False) -> None:
        """Add LoRA adapter ``new_name`` = sum_i weights[i] * adapters[i], exactly (``AdapterMixin``
        calls this on the first adapter's config class; see ``nemo_peft.peft.combine``). The result
        is plain LoRA whatever subclass (QLoRA) the sources were made with."""
        combine.add_weighted_adapter(LoraPEFTConfig, model, adapters, weights, new_name, activate=activate)

    def build_adapters(self, slots: list[SlotContext]):
        built, matched = {}, set()
        lora_slots = [s for s in slots if s.spec.kind == "lora"]
        for ctx in lora_slots:
            parts = host_parts(ctx.block, ctx.spec.host)
            chosen = set()
            for target in self.target_modules:
                sel = select_parts(target, ctx.spec.host, ctx.host_path, parts)
                if sel:
                    matched.add(target)
                    chosen |= sel
            if not chosen or not self.in_layer_selection(ctx):
                continue
            host = getattr(ctx.block, ctx.spec.host)
            if "all" in chosen:  # one fused adapter over the whole output
                slices = [(0, host.out_features)]
                units = ["all"]
            else:  # one A_p/B_p per chosen part, in the host's part order
                slices = [offset_size for name, offset_size in parts.items() if name in chosen]
                units = [name for name in parts if name in chosen]
            dim = self._pattern_value("rank_pattern", self.rank_pattern, self.dim, ctx, parts, units)
            alpha = self._pattern_value("alpha_pattern", self.alpha_pattern, self.alpha, ctx, parts, units)
            built[ctx.key] = self.make_adapter(ctx, slices, dim, alpha)
        example = lora_slots[0].host_path if lora_slots else "decoder.layers.0.self_attention.linear_qkv"
        unmatched = [t for t in self.target_modules if t not in matched]
        if unmatched:
            raise ValueError(f"LoRA target(s) {unmatched} matched no module in this model. "
                             + known_names_message(example))
        for what in ("rank_pattern", "alpha_pattern"):
            patterns = getattr(self, what) or {}
            unused = [k for k in patterns if not any(
                select_parts(k, s.spec.host, s.host_path, host_parts(s.block, s.spec.host)) for s in lora_slots)]
            if unused:
                raise ValueError(f"{what} key(s) {unused} matched no module in this model. "
                                 + known_names_message(example))
        if not built:
            raise ValueError(
                f"layer_selection={self.layer_selection} selects no layer of this model "
                "(layer numbers are 1-based); pick numbers between 1 and the model's num_layers."
            )
        return built

    @staticmethod
    def _pattern_value(what: str, patterns: dict | None, default, ctx: SlotContext, parts: dict, units: list[str]):
        """The value of ``rank_pattern``/``alpha_pattern`` for the adapter on ``ctx``'s host.

        ``units`` are the parts one adapter covers (["all"] for a fused adapter over the whole host).
        Later keys win; the units of one adapter must agree, as they share one rank and one scale."""
        if not patterns:
            return default
        values = {u: default for u in units}
        for key, value in patterns.items():
            sel = select_parts(key, ctx.spec.host, ctx.host_path, parts)
            if not sel:
                continue
            if "all" in sel:
                hit = units
            elif units == ["all"]:
                raise ValueError(
                    f"{what} key {key!r} selects only part(s) {sorted(sel)} of {ctx.host_path}, but the adapter "
                    "there covers the whole fused module (one A/B); target the parts separately "
                    "(e.g. q_proj, k_proj, v_proj) or give the pattern for the whole module.")
            else:
                hit = [u for u in units if u in sel]
            for u in hit:
                values[u] = value
        distinct = set(values.values())
        if len(distinct) > 1:
            raise ValueError(
                f"{what} gives different values {values} to the parts of {ctx.host_path}; those parts share "
                "one adapter (stacked A/B with one rank and one scale), so give them the same value.")
        return distinct.pop()


def _check_pattern(cfg: LoraPEFTConfig, what: str, kind) -> dict | None:
    patterns = getattr(cfg, what)
    if patterns is None:
        return None
    if not hasattr(patterns, "items"):
        raise option_error(cfg, what, "must be a mapping {target: value}")
    out = {}
    for key, value in patterns.items():
        if not is_number(value) or (kind is int and value != int(value)):
            raise option_error(cfg, what, f"expected {'an integer' if kind is int else 'a number'}", item=key)
        if value <= 0:
            raise option_error(cfg, what, "must be > 0 (it is a rank or an alpha)", item=key)
        out[str(key)] = kind(value)
    return out
