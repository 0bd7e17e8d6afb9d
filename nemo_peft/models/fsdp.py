"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for an adapter model: shard it over a data-parallel
mesh, gather the adapter weights whole when they are saved, and keep generation in step.

Each transformer block (the model's ``fsdp_units()``) is one unit and the model itself is the
root unit (embeddings, final norm, head, P-tuning's prompt encoder). Frozen base weights and
trainable adapters share a unit: FSDP2 keeps per-parameter ``requires_grad``, so only adapter
gradients are reduce-scattered. Methods the training and generation paths call besides
``forward`` (``logits``, ``lm_loss``, ``encode``) are registered so they gather the root's weights.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from nemo_peft.modules.weight_layout import store_weights_row_major


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def check_shardable(model) -> None:
    """A clear error for an adapter method whose weights fully_shard cannot shard."""
    for name in model.adapter_names:
        for cfg in model.adapter_configs(name):
            why = getattr(cfg, "fsdp_unsupported", None)
            if why:
                raise ValueError(f"trainer.strategy=fsdp cannot train adapter {name!r} ({cfg.method}): {why} "
                                 "Use trainer.strategy=ddp (or trainer=ddp) for it.")


def shard_model(model, mesh) -> None:
    """fully_shard every block of ``model`` and then the model, over ``mesh`` (1-D, data parallel)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    check_shardable(model)
    store_weights_row_major(model)  # fully_shard takes contiguous parameters only
    for unit in model.fsdp_units():
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for method in model.fsdp_forward_methods:
        register_fsdp_forward_method(model, method)


def _adapter_parameters(model: nn.Module):
    for module_name, module in model.named_modules():
        if ".adapters." in f"{module_name}." or module_name.startswith("adapters."):
            for name, param in module.named_parameters(recurse=False):
                yield module, name, param


@contextlib.contextmanager
def full_adapter_weights(model: nn.Module):
    """Inside, every sharded adapter parameter of ``model`` is whole (a plain tensor) on every
    process, e.g. for ``save_adapters``; the sharded ones are put back on exit. A collective:
    every process must enter. Nothing happens for a model that is not sharded."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for module in model.modules():  # the root keeps its weights gathered after a forward: shard it back first
        if isinstance(module, FSDPModule):
            module.reshard()
    swapped = []
    try:
        for module, name, param in list(_adapter_parameters(model)):
            if isinstance(param, DTensor):
                module._parameters[name] = nn.Parameter(param.full_tensor().detach(), requires_grad=param.requires_grad)
                swapped.append((module, name, param))
        yield model
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


def everyone_done(done: bool, device: torch.device) -> bool:
    """Whether every process is done generating (sharded forwards must run in step on all)."""
    flag = torch.tensor([0.0 if done else 1.0], device=device)
    torch.distributed.all_reduce(flag)
    return float(flag) == 0.0
