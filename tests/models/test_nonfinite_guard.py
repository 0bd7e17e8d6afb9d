"""The non-finite guard: a NaN/inf loss, gradient norm or adapter weight stops training with the
step, the lr and the last good checkpoint; no checkpoint or adapter with NaN/inf is written or loaded."""
import json
import os
import random

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from nemo_peft.core import adapter_io
from nemo_peft.recipes.build import build_data, build_model, build_trainer
from nemo_peft.recipes.checkpoint_io import SafeCheckpointIO

MODEL = {"from_scratch": {"hidden_size": 32, "num_layers": 2, "num_attention_heads": 4, "ffn_hidden_size": 64},
         "optim": {"lr": 5e-3}, "eval_exact_match": False,
         "peft": {"peft_scheme": "lora", "lora_tuning": {"target_modules": ["all"], "dim": 4}}}
BAD_STEP = 5  # the injection happens in training step 5; checkpoints come every 2 steps


@pytest.fixture
def tiny_task(tmp_path):
    """32 rows of a copy task ("x: abc =>" -> "abc")."""
    rng, path = random.Random(0), tmp_path / "train.jsonl"
    words = ("".join(rng.choice("abcd") for _ in range(3)) for _ in range(32))
    path.write_text("".join(json.dumps({"input": f"x: {w} =>", "output": w}) + "\n" for w in words))
    return {"train": str(path)}


class _Inject(L.Callback):
    """Breaks training step BAD_STEP in one of three ways."""

    def __init__(self, how, lr=float("inf")):
        self.how, self.lr = how, lr

    def _now(self, trainer):
        return trainer.global_step + 1 == BAD_STEP

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.how == "weight" and self._now(trainer):
            with torch.no_grad():
                next(p for p in module.parameters() if p.requires_grad).fill_(float("nan"))

    def on_after_backward(self, trainer, module):
        if self.how == "grad" and self._now(trainer):
            next(p for p in module.parameters() if p.grad is not None).grad.fill_(float("inf"))

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.how == "lr" and self._now(trainer):
            for group in optimizer.param_groups:
                group["lr"] = self.lr


def _fit(tmp_path, tiny_task, inject, steps=8):
    L.seed_everything(0, verbose=False)
    module = build_model(OmegaConf.create(MODEL))
    data = build_data(OmegaConf.create({"train_ds": {"file_names": [tiny_task["train"]], "micro_batch_size": 8,
                                                     "max_seq_length": 32}}), module.tokenizer, module.model)
    trainer = build_trainer(OmegaConf.create({"accelerator": "cpu", "max_steps": steps, "logger": False,
                                              "enable_progress_bar": False, "enable_model_summary": False}),
                            str(tmp_path), OmegaConf.create({"save_last": True, "save_top_k": 0,
                                                             "every_n_train_steps": 2}))
    trainer.callbacks.insert(0, inject)
    trainer.fit(module, datamodule=data)
    return module


@pytest.mark.parametrize("how,what", [("weight", "the loss is nan"), ("grad", "the gradient norm is inf"),
                                      ("lr", "an adapter weight became non-finite in the optimizer step")])
def test_non_finite_stops_with_step_lr_and_last_good_checkpoint(tmp_path, tiny_task, how, what):
    with pytest.raises(FloatingPointError) as err:
        _fit(tmp_path, tiny_task, _Inject(how))
    msg, last = str(err.value), str(tmp_path / "checkpoints" / "last.ckpt")
    assert what in msg and f"step {BAD_STEP} of 8" in msg and "(lr " in msg and repr(last) in msg, msg
    ckpt = SafeCheckpointIO().load_checkpoint(last)  # finite, or loading would raise
    assert ckpt["global_step"] == BAD_STEP - 1 and ckpt["state_dict"]


def test_exploding_weights_warn(tmp_path, tiny_task):
    with pytest.warns(UserWarning, match=f"reached magnitude .* in training step {BAD_STEP}"):
        module = _fit(tmp_path, tiny_task, _Inject("lr", lr=1e6), steps=BAD_STEP)
    assert all(torch.isfinite(t).all() for t in module.model.adapter_state_dict().values())


def test_checkpoint_io_refuses_non_finite_adapter_and_keeps_the_old_file(tmp_path):
    path, io = str(tmp_path / "last.ckpt"), SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"model.a.adapters.default.lora_B": torch.ones(2)}, "global_step": 4}, path)
    before = open(path, "rb").read()
    bad = {"model.a.adapters.default.lora_B": torch.tensor([1.0, float("nan")])}
    with pytest.raises(ValueError, match=r"Refusing to write checkpoint .*last\.ckpt.* step 6 .*lora_B"):
        io.save_checkpoint({"state_dict": bad, "global_step": 6}, path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["last.ckpt"]
    torch.save({"state_dict": bad}, str(tmp_path / "bad.ckpt"))
    with pytest.raises(ValueError, match=r"Cannot resume from .*bad\.ckpt.*lora_B"):
        io.load_checkpoint(str(tmp_path / "bad.ckpt"))


def test_non_finite_adapter_is_neither_saved_nor_loaded(tmp_path, monkeypatch):
    module = build_model(OmegaConf.create(MODEL))
    name, tensor = next(iter(module.model.adapter_state_dict().items()))
    with torch.no_grad():
        tensor.fill_(float("inf"))
    with pytest.raises(ValueError, match=f"Refusing to save the adapter .*{name}"):
        module.save_adapters(str(tmp_path / "adapter"))
    assert not os.path.exists(tmp_path / "adapter")
    monkeypatch.setattr(adapter_io, "check_finite", lambda tensors, where: None)  # write one anyway
    module.save_adapters(str(tmp_path / "adapter"))
    monkeypatch.undo()
    fresh = build_model(OmegaConf.create(MODEL))
    with pytest.raises(ValueError, match=f"Cannot load .*adapter_weights.safetensors.*{name}.*non-finite"):
        fresh.load_adapters(str(tmp_path / "adapter"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_finite_names_the_tensor_whatever_its_neighbours(bad):
    """The one-pass sum screen must neither miss a bad value nor blame huge finite ones (their sum overflows)."""
    huge = {"big": torch.full((4,), 3e38), "big_bf16": torch.full((4,), 3e38, dtype=torch.bfloat16),
            "ids": torch.arange(3)}
    adapter_io.check_finite(huge, "ok")  # finite, though every float sum is inf
    tensors = {**huge, **{f"t{i}": torch.randn(8, 8) for i in range(5)}}
    tensors["t3"][2, 5] = bad
    with pytest.raises(ValueError, match=r"where: adapter tensor 't3' has 1 non-finite value"):
        adapter_io.check_finite(tensors, "where")
