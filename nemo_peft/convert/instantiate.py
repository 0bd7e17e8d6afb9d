"""Build a model around a loaded state dict without paying for a random init."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nemo_peft.modules.weight_layout import base_weights, decode_layout


def instantiate(model_cls: type, cfg, state: dict[str, torch.Tensor], source: str,
                dtype: torch.dtype | None = None, after_load: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """``model_cls(cfg)`` holding ``state`` (cast to ``dtype`` when given; ``state`` is consumed: its
    base linear weights are replaced by their copies in the decode layout).

    The model is built on the meta device and the tensors are assigned, so nothing is
    initialised twice. ``after_load`` fills what a state dict does not hold (non-persistent
    buffers such as RoPE frequencies). The names and shapes must match the config exactly.
    """
    if dtype is not None:
        for k, v in state.items():  # one tensor at a time: the file's copy goes as the cast is made
            state[k] = v.to(dtype)
    with torch.device("meta"):
        model = model_cls(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items() if ".adapters." not in k}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(v.shape)} vs config {tuple(expected[k])}"
             for k, v in state.items() if k in expected and v.shape != expected[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"{source}: the weights do not fit the model config read from it: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}.")
    _decode_layout_in_place(model, state)
    model.load_state_dict(state, strict=False, assign=True)
    if after_load is not None:
        after_load(model)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        # a module gained state this loader does not fill: build it the slow way (the model's init and
        # .to(dtype) choose the weights' layout; load_state_dict copies into it)
        model = model_cls(cfg)
        if dtype is not None:
            model = model.to(dtype)
        model.load_state_dict(state, strict=False)
        if after_load is not None:
            after_load(model)
    return model


def _decode_layout_in_place(meta_model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give the base weights their decode layout (modules/weight_layout.py) in ``state`` itself, one
    tensor at a time: each file-layout tensor is freed as its copy is made, so loading never holds the
    weights twice (relayouting the assigned model afterwards would, while ``state`` is alive)."""
    for key in base_weights(meta_model, meta_model.output_weight()).keys() & state.keys():
        state[key] = decode_layout(state[key])
