"""Build a model around a loaded state dict without paying for a random init."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nemo_peft.modules.weight_layout import store_base_weights_column_major


def instantiate(model_cls: type, cfg, state: dict[str, torch.Tensor], source: str,
                dtype: torch.dtype | None = None, after_load: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """``model_cls(cfg)`` holding ``state`` (cast to ``dtype`` when given).

    The model is built on the meta device and the tensors are assigned, so nothing is
    initialised twice. ``after_load`` fills what a state dict does not hold (non-persistent
    buffers such as RoPE frequencies). The names and shapes must match the config exactly.
    """
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
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
    model.load_state_dict(state, strict=False, assign=True)
    if after_load is not None:
        after_load(model)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        # a module gained state this loader does not fill: build it the slow way
        model = model_cls(cfg)
        if dtype is not None:
            model = model.to(dtype)
        model.load_state_dict(state, strict=False)
        if after_load is not None:
            after_load(model)
    store_base_weights_column_major(model, model.output_weight())  # assign=True brought the files' layout
    return model
