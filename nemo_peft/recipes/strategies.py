"""Lightning strategies for adapter training, chosen by ``trainer.strategy``, and the batch arithmetic.

- ``ddp``: Lightning's DDPStrategy (gloo on CPU, NCCL on GPU). DDP only puts parameters that
  require grad in its buckets, so only adapter gradients are all-reduced; the frozen base and the
  buffers are also kept out of DDP's start-up broadcast (every process loaded the same base).
  The bytes all-reduced are counted (``AdapterDDPStrategy.reduced_bytes``).
- ``fsdp``: FSDP2 (``fully_shard``) through Lightning's ModelParallelStrategy, which builds its
  device mesh on the accelerator's device type and so runs on CPU over gloo, too. Lightning's own
  ``fsdp`` (FSDP1) needs a GPU and ``use_orig_params=True`` for a frozen base with trainable
  adapters; FSDP2 keeps per-parameter ``requires_grad`` and needs neither. Its checkpoints hold
  the gathered adapter state only, never the frozen base.
"""
from __future__ import annotations

import difflib
import inspect
import os

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, StrategyRegistry
from torch.nn.parallel import DistributedDataParallel

from nemo_peft.models.fsdp import full_adapter_weights

OURS = ("auto", "ddp", "fsdp")
# torch renamed DDP's broadcast_buffers to forward_sync_buffers
_NO_FORWARD_BUFFER_SYNC = ("forward_sync_buffers" if "forward_sync_buffers" in
                           inspect.signature(DistributedDataParallel.__init__).parameters else "broadcast_buffers")


class AdapterDDPStrategy(DDPStrategy):
    def __init__(self, **kwargs):
        # no buffer broadcast before every forward (evaluation runs uneven forwards per process);
        # at start-up the buffers are left out too (_setup_model)
        super().__init__(**{_NO_FORWARD_BUFFER_SYNC: False}, **kwargs)
        self.reduced_bytes = 0  # gradient bytes this process all-reduced in this run
        self.steps = 0  # optimizer steps in this run

    def optimizer_step(self, *args, **kwargs):
        self.steps += 1
        return super().optimizer_step(*args, **kwargs)

    def _setup_model(self, model):
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad] + [n for n, _ in model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
        ddp = super()._setup_model(model)
        ddp.register_comm_hook(self, _counting_allreduce)  # Lightning registers hooks on CUDA only
        return ddp


def _counting_allreduce(strategy: AdapterDDPStrategy, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buffer = bucket.buffer()
    strategy.reduced_bytes += buffer.numel() * buffer.element_size()
    return allreduce_hook(None, bucket)


class AdapterFSDPStrategy(ModelParallelStrategy):
    """ModelParallelStrategy with every process in the data-parallel dimension, whose checkpoint
    state is the adapters' (gathered whole on every process, written by the first)."""

    def __init__(self, data_parallel_size: int):
        super().__init__(data_parallel_size=data_parallel_size, tensor_parallel_size=1,
                         save_distributed_checkpoint=False)

    def lightning_module_state_dict(self) -> dict:
        module = self.lightning_module
        with full_adapter_weights(module.model):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()
                     if ".adapters." in k and not hasattr(v, "full_tensor")}
        return state if self.global_rank == 0 else {}


def _accelerator(trainer_kwargs: dict):
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    name = trainer_kwargs.get("accelerator", "auto")
    if name in ("gpu", "cuda") or name == "auto" and CUDAAccelerator.is_available():
        return CUDAAccelerator
    return CPUAccelerator if name in ("cpu", "auto") else None


def devices_per_node(trainer_kwargs: dict) -> int:
    """How many processes ``trainer.devices`` starts on a node, read as Lightning reads it."""
    devices, accelerator = trainer_kwargs.get("devices", "auto"), _accelerator(trainer_kwargs)
    if accelerator is None:  # another accelerator: take devices as given
        return len(devices) if isinstance(devices, (list, tuple)) else 1 if devices in ("auto", None) else int(devices)
    if devices in ("auto", None):
        return accelerator.auto_device_count()
    parsed = accelerator.parse_devices(devices)  # Lightning's own parser: its errors name the bad value
    return len(parsed) if isinstance(parsed, (list, tuple)) else int(parsed)


def data_parallel_size(trainer_kwargs: dict) -> int:
    """How many processes split each batch: devices per node x num_nodes."""
    return devices_per_node(trainer_kwargs) * int(trainer_kwargs.get("num_nodes", 1) or 1)


def check_devices(trainer_kwargs: dict) -> None:
    devices = trainer_kwargs.get("devices", 1)
    if not isinstance(devices, int) or devices < 1:
        return
    if trainer_kwargs.get("accelerator") in ("gpu", "cuda"):
        have, what, fix = torch.cuda.device_count(), "GPU(s) visible", "or set CUDA_VISIBLE_DEVICES"
    elif trainer_kwargs.get("accelerator", "cpu") == "cpu":
        have, what, fix = len(os.sched_getaffinity(0)), "CPU core(s) available", "each CPU device is one process"
    else:
        return
    if devices > have:
        raise ValueError(f"trainer.devices={devices} but this machine has {have} {what}; set trainer.devices to at "
                         f"most {have} ({fix}).")


def build_strategy(trainer_kwargs: dict):
    """``trainer.strategy``: one of ours, a Lightning strategy name, or a Strategy object."""
    name = trainer_kwargs.get("strategy", "auto")
    if not isinstance(name, str):
        return name
    if name == "ddp" or name == "auto" and data_parallel_size(trainer_kwargs) > 1:
        return AdapterDDPStrategy()
    if name == "fsdp":
        return AdapterFSDPStrategy(data_parallel_size(trainer_kwargs))
    if name in StrategyRegistry.available_strategies() or name == "auto":
        return name
    close = difflib.get_close_matches(name, [*OURS, *StrategyRegistry.available_strategies()], n=1)
    raise ValueError(f"trainer.strategy={name!r} is not a strategy{f' (did you mean {close[0]!r}?)' if close else ''}; "
                     "use auto (one process), ddp (data parallel; or trainer=ddp), fsdp (FSDP2, shards the frozen base "
                     "too; or trainer=fsdp), or a name in Lightning's StrategyRegistry (e.g. ddp_spawn, deepspeed).")


def accumulation(global_batch_size, micro_batch_size: int, trainer_kwargs: dict) -> int:
    """Gradient accumulation from ``model.global_batch_size`` = micro batch x data-parallel size x
    accumulation (NeMo's arithmetic); with ``global_batch_size: null``, trainer.accumulate_grad_batches."""
    given = int(trainer_kwargs.get("accumulate_grad_batches", 1) or 1)
    if global_batch_size is None:
        return given
    dp = data_parallel_size(trainer_kwargs)
    per_step = micro_batch_size * dp
    if int(global_batch_size) < 1 or int(global_batch_size) % per_step:
        raise ValueError(
            f"model.global_batch_size={global_batch_size} is not a multiple of data.train_ds.micro_batch_size "
            f"({micro_batch_size}) x data-parallel processes ({dp} = trainer.devices x trainer.num_nodes) = "
            f"{per_step}; set it to a multiple of {per_step} (e.g. {per_step * max(1, int(global_batch_size) // per_step)}"
            f"), or change the micro batch size or the number of devices.")
    derived = int(global_batch_size) // per_step
    if given not in (1, derived):
        raise ValueError(f"trainer.accumulate_grad_batches={given} disagrees with model.global_batch_size="
                         f"{global_batch_size} (= {micro_batch_size} x {dp} x {derived}); set only one of them.")
    return derived
