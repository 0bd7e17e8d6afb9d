"""Feed-forward block: ``linear_fc1`` (fused gate+up when gated) and ``linear_fc2``."""
from __future__ import annotations

import contextlib
from functools import partial

import torch.nn.functional as F
from torch import nn

from nemo_peft.core.slots import SlotSpec, add_adapter_slots
from nemo_peft.modules.linear import Linear
from nemo_peft.modules.memory_lean_ops import swiglu
from nemo_peft.modules.recompute import rebuilt_in_backward

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}


class MLP(nn.Module):
    adapter_slots = (
        SlotSpec("lora_fc1", "lora", "linear_fc1"),
        SlotSpec("lora_fc2", "lora", "linear_fc2"),
        SlotSpec("ia3_mlp", "scale", "linear_fc2"),  # scales the intermediate activation (fc2's input)
    )

    def __init__(self, hidden_size, ffn_hidden_size, activation, gated, bias):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}.")
        self.act, self.activation = ACTIVATIONS[activation], activation
        self.gated = gated
        width = 2 * ffn_hidden_size if gated else ffn_hidden_size
        self.linear_fc1 = Linear(hidden_size, width, bias=bias)
        self.linear_fc2 = Linear(ffn_hidden_size, hidden_size, bias=bias)
        if gated:  # [gate | up], as in Megatron's fused SwiGLU
            self.output_parts = {"linear_fc1": {"gate": (0, ffn_hidden_size), "up": (ffn_hidden_size, ffn_hidden_size)}}
        add_adapter_slots(self)

    def forward(self, x):
        h = self.linear_fc1(x)
        if self.lora_fc1.active:
            h = self.lora_fc1(x, h)
        fc1_out = h
        if self.gated and self.activation == "silu":
            h = swiglu(h)  # keeps only [gate | up] for backward
        elif self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        if self.ia3_mlp.active:
            h = self.ia3_mlp(h)
        out = self.linear_fc2(h)
        if self.lora_fc2.active:
            # LoRA's A keeps its input for backward: SwiGLU's output is rebuilt from [gate | up] instead
            lean = self.gated and self.activation == "silu" and not self.ia3_mlp.active
            with rebuilt_in_backward(h, partial(swiglu, fc1_out)) if lean else contextlib.nullcontext():
                out = self.lora_fc2(h, out)
        return out
