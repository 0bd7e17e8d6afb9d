"""trainer.strategy / devices / num_nodes / global batch arithmetic and the trainer's logger, without
starting any process (recipes/strategies.py, models/fsdp.py check_shardable, recipes/build.py)."""
import os
import re

import pytest
import torch
from omegaconf import OmegaConf

from nemo_peft.models.fsdp import check_shardable
from nemo_peft.peft import (BottleneckAdapterPEFTConfig, LoraPEFTConfig, PtuningPEFTConfig,
                            QLoraPEFTConfig)
from nemo_peft.recipes.build import build_trainer
from nemo_peft.recipes.run_config import batch_arithmetic
from nemo_peft.recipes.strategies import (AdapterDDPStrategy, AdapterFSDPStrategy, accumulation, build_strategy,
                                          check_devices, data_parallel_size)
from tests.helpers import make_model

# ---------------------------------------------------------------- data-parallel size


@pytest.mark.parametrize("kwargs, size", [
    ({}, 1),
    ({"devices": 1}, 1),
    ({"devices": 4}, 4),
    ({"devices": "3"}, 3),
    ({"devices": "auto"}, 1),
    ({"devices": None}, 1),
    ({"devices": 2, "num_nodes": 3}, 6),
    ({"devices": "auto", "num_nodes": 2}, 2),
    ({"devices": 2, "num_nodes": None}, 2),
])
def test_data_parallel_size(kwargs, size):
    assert data_parallel_size({"accelerator": "cpu", **kwargs}) == size


def test_gpu_devices_are_read_as_lightning_reads_them(monkeypatch):
    from lightning.pytorch.accelerators import CUDAAccelerator

    monkeypatch.setattr(CUDAAccelerator, "auto_device_count", staticmethod(lambda: 4))
    monkeypatch.setattr(CUDAAccelerator, "parse_devices", staticmethod(lambda d: [0, 1, 2, 3] if d == -1 else [0, 1]))
    assert data_parallel_size({"accelerator": "gpu", "devices": "auto"}) == 4  # one process per visible GPU
    assert data_parallel_size({"accelerator": "gpu", "devices": -1, "num_nodes": 2}) == 8
    assert data_parallel_size({"accelerator": "gpu", "devices": "0,1"}) == 2
    assert accumulation(32, 4, {"accelerator": "gpu", "devices": -1}) == 2


def test_devices_that_lightning_rejects_are_its_error():
    with pytest.raises(TypeError, match="devices"):
        data_parallel_size({"accelerator": "cpu", "devices": [0, 2]})


# ---------------------------------------------------------------- global batch = micro x processes x accumulation

@pytest.mark.parametrize("global_batch, micro, kwargs, expected", [
    (16, 4, {}, 4),
    (16, 4, {"devices": 2}, 2),
    (16, 2, {"devices": 2, "num_nodes": 2}, 2),
    (48, 2, {"devices": 3}, 8),
    (8, 8, {}, 1),
    (16, 4, {"devices": 2, "accumulate_grad_batches": 2}, 2),  # agreeing is fine
    (16, 4, {"devices": 2, "accumulate_grad_batches": 1}, 2),  # 1 is the default: derived wins
    (16, 4, {"accumulate_grad_batches": None}, 4),
])
def test_accumulation_is_derived_from_the_global_batch(global_batch, micro, kwargs, expected):
    assert accumulation(global_batch, micro, kwargs) == expected


@pytest.mark.parametrize("kwargs, expected", [({}, 1), ({"accumulate_grad_batches": 3}, 3),
                                              ({"accumulate_grad_batches": 3, "devices": 4}, 3)])
def test_no_global_batch_keeps_accumulate_grad_batches(kwargs, expected):
    assert accumulation(None, 4, kwargs) == expected


@pytest.mark.parametrize("global_batch, micro, kwargs, per_step, example", [
    (12, 4, {"devices": 2}, 8, 8),
    (6, 4, {}, 4, 4),
    (2, 4, {}, 4, 4),  # smaller than one step: the example is one step
    (20, 3, {"devices": 2, "num_nodes": 2}, 12, 12),
    (0, 4, {}, 4, 4),
])
def test_global_batch_not_a_multiple_names_the_multiple(global_batch, micro, kwargs, per_step, example):
    dp = data_parallel_size(kwargs)
    with pytest.raises(ValueError) as info:
        accumulation(global_batch, micro, kwargs)
    message = str(info.value)
    assert f"model.global_batch_size={global_batch} is not a multiple of data.train_ds.micro_batch_size " \
           f"({micro}) x data-parallel processes ({dp} = trainer.devices x trainer.num_nodes) = {per_step}" in message
    assert f"set it to a multiple of {per_step} (e.g. {example})" in message


def test_accumulate_grad_batches_disagreeing_with_the_global_batch():
    with pytest.raises(ValueError, match=re.escape(
            "trainer.accumulate_grad_batches=3 disagrees with model.global_batch_size=16 (= 4 x 2 x 2); "
            "set only one of them.")):
        accumulation(16, 4, {"devices": 2, "accumulate_grad_batches": 3})


def test_batch_arithmetic_sets_accumulation_and_states_it():
    cfg = OmegaConf.create({"model": {"global_batch_size": 16}, "data": {"train_ds": {"micro_batch_size": 2}},
                            "trainer": {"devices": 2, "strategy": "ddp", "accumulate_grad_batches": 1}})
    trainer_cfg, line = batch_arithmetic(cfg)
    assert trainer_cfg.accumulate_grad_batches == 4
    assert cfg.trainer.accumulate_grad_batches == 1  # the run's config is left as it was
    assert line.startswith("global batch 16 = micro batch 2 x 2 data-parallel process(es) x 4 accumulation step(s)")
    cfg.model.global_batch_size = None
    cfg.trainer.accumulate_grad_batches = 3
    assert batch_arithmetic(cfg)[1].startswith("global batch 12 = micro batch 2 x 2")


# ---------------------------------------------------------------- trainer.strategy

@pytest.mark.parametrize("kwargs", [{"strategy": "ddp"}, {"strategy": "ddp", "devices": 2},
                                    {"strategy": "auto", "devices": 2}, {"devices": 2},
                                    {"strategy": "auto", "devices": 1, "num_nodes": 2}])
def test_ddp_and_multi_process_auto_are_our_ddp(kwargs):
    assert isinstance(build_strategy(kwargs), AdapterDDPStrategy)


def test_fsdp_is_our_fsdp2_over_every_process():
    strategy = build_strategy({"strategy": "fsdp", "devices": 2, "num_nodes": 2})
    assert isinstance(strategy, AdapterFSDPStrategy)
    assert strategy._data_parallel_size == 4 and strategy._tensor_parallel_size == 1


@pytest.mark.parametrize("kwargs", [{}, {"strategy": "auto"}, {"strategy": "auto", "devices": 1},
                                    {"strategy": "auto", "devices": "auto"}])
def test_one_process_auto_stays_auto(kwargs):
    assert build_strategy(kwargs) == "auto"


@pytest.mark.parametrize("name", ["ddp_spawn", "deepspeed", "single_device", "ddp_find_unused_parameters_true"])
def test_lightning_registry_names_pass_through(name):
    assert build_strategy({"strategy": name, "devices": 2}) == name


def test_a_strategy_object_passes_through():
    strategy = AdapterDDPStrategy()
    assert build_strategy({"strategy": strategy}) is strategy


@pytest.mark.parametrize("name, close", [("dpp", "ddp"), ("fdsp", "fsdp"), ("ddp-spawn", "ddp_spawn"),
                                         ("deepspeed_stage3", "deepspeed_stage_3")])
def test_unknown_strategy_suggests_a_close_name(name, close):
    with pytest.raises(ValueError) as info:
        build_strategy({"strategy": name})
    message = str(info.value)
    assert message.startswith(f"trainer.strategy={name!r} is not a strategy (did you mean {close!r}?); use auto")
    assert "Lightning's StrategyRegistry" in message


def test_unknown_strategy_without_a_close_name():
    with pytest.raises(ValueError, match=r"^trainer\.strategy='horovod' is not a strategy; use auto "):
        build_strategy({"strategy": "horovod"})


# ---------------------------------------------------------------- trainer.devices against the machine

def test_more_cpu_devices_than_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    check_devices({"accelerator": "cpu", "devices": 3})
    check_devices({"devices": 2})  # the accelerator defaults to cpu
    with pytest.raises(ValueError, match=re.escape(
            "trainer.devices=4 but this machine has 3 CPU core(s) available; set trainer.devices to at most 3 "
            "(each CPU device is one process).")):
        check_devices({"accelerator": "cpu", "devices": 4})
    with pytest.raises(ValueError, match="trainer.devices=64 but this machine has 3 CPU core"):
        check_devices({"devices": 64})


def test_more_gpus_than_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_devices({"accelerator": "gpu", "devices": 1})
    for accelerator in ("gpu", "cuda"):
        with pytest.raises(ValueError, match=re.escape(
                "trainer.devices=2 but this machine has 1 GPU(s) visible; set trainer.devices to at most 1 "
                "(or set CUDA_VISIBLE_DEVICES).")):
            check_devices({"accelerator": accelerator, "devices": 2})


@pytest.mark.parametrize("kwargs", [{"devices": "auto"}, {"devices": [0, 1, 2, 3, 4, 5, 6, 7, 8]}, {"devices": -1},
                                    {"devices": 0}, {"accelerator": "tpu", "devices": 64},
                                    {"accelerator": "auto", "devices": 64}])
def test_devices_that_are_not_checked(kwargs, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    check_devices(kwargs)  # Lightning reports these itself


# ---------------------------------------------------------------- FSDP2 and the adapter methods

def test_qlora_cannot_be_sharded():
    model = make_model("llama")
    model.add_adapter(QLoraPEFTConfig(target_modules=["linear_qkv"], dim=2))
    with pytest.raises(ValueError, match=re.escape(
            "trainer.strategy=fsdp cannot train adapter 'default' (qlora): its 4-bit base weights are stored as "
            "packed uint8 buffers")) as info:
        check_shardable(model)
    assert "Use trainer.strategy=ddp (or trainer=ddp) for it." in str(info.value)


def test_qlora_next_to_a_shardable_adapter_is_named():
    model = make_model("llama")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_proj"], dim=2), name="plain")
    model.add_adapter(QLoraPEFTConfig(target_modules=["linear_qkv"], dim=2), name="quant")
    with pytest.raises(ValueError, match=r"cannot train adapter 'quant' \(qlora\)"):
        check_shardable(model)


PTUNING = dict(virtual_tokens=3, bottleneck_dim=8, embedding_dim=8)


@pytest.mark.parametrize("configs", [
    [LoraPEFTConfig(target_modules=["all"], dim=2)],
    [PtuningPEFTConfig(**PTUNING)],
    [BottleneckAdapterPEFTConfig(adapter_dim=4)],
    [PtuningPEFTConfig(**PTUNING), BottleneckAdapterPEFTConfig(adapter_dim=4)],
], ids=["lora", "ptuning", "adapter", "ptuning+adapter"])
def test_other_methods_can_be_sharded(configs):
    model = make_model("llama")
    model.add_adapter(configs)
    check_shardable(model)


# ---------------------------------------------------------------- trainer.logger

def _trainer_cfg(**changes):
    return OmegaConf.create({"accelerator": "cpu", "devices": 1, "max_steps": 1, "enable_progress_bar": False,
                             "enable_model_summary": False, "logger": False, **changes})


def test_csv_logger_writes_exactly_output_dir_metrics_csv(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from nemo_peft.recipes.loggers import build_loggers

    out = tmp_path / "run"
    loggers = build_loggers(OmegaConf.create({}), str(out), "run")  # exp_manager's default: the CSV logger
    trainer = build_trainer(_trainer_cfg(logger=None), str(out), None, loggers=loggers)
    logger = trainer.logger
    assert isinstance(logger, CSVLogger)
    logger.log_metrics({"train_loss": 1.5}, step=0)
    logger.save()
    written = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files]
    assert written == [str(out / "metrics.csv")], written


def test_no_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    assert build_trainer(_trainer_cfg(), str(tmp_path / "run"), None).logger is None
    assert build_trainer(_trainer_cfg(logger=None), str(tmp_path / "run"), None).logger is None
    # trainer.logger=false turns exp_manager's loggers off too
    assert build_trainer(_trainer_cfg(), str(tmp_path / "run"), None, loggers=[CSVLogger(str(tmp_path))]).logger is None


def test_tensorboard_logger_under_the_output_dir(tmp_path):
    pytest.importorskip("tensorboard")  # an optional extra of nemo_peft
    from nemo_peft.recipes.loggers import build_loggers

    loggers = build_loggers(OmegaConf.create({"create_csv_logger": False, "create_tensorboard_logger": True}),
                            str(tmp_path / "run"), "run")
    trainer = build_trainer(_trainer_cfg(logger=None), str(tmp_path / "run"), None, loggers=loggers)
    assert trainer.logger.log_dir.rstrip(os.sep) == str(tmp_path / "run" / "tensorboard")


@pytest.mark.parametrize("logger,new", [("wandb", "exp_manager.create_wandb_logger=true"),
                                        ("csv", "exp_manager.create_csv_logger=true"),
                                        ("none", "exp_manager.create_csv_logger (on by default)")])
def test_a_logger_name_in_trainer_logger_names_the_exp_manager_key(logger, new, tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"trainer.logger={logger!r} is no longer a logger choice; use {new}")):
        build_trainer(_trainer_cfg(logger=logger), str(tmp_path / "run"), None)
