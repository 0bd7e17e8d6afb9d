"""Resuming from a Lightning checkpoint continues the same loss curve."""
import os

import lightning as L
import torch
from omegaconf import OmegaConf

from nemo_peft.recipes.build import build_data, build_model, build_trainer

MODEL = {"from_scratch": {"hidden_size": 32, "num_layers": 2, "num_attention_heads": 4, "ffn_hidden_size": 64},
         "optim": {"lr": 5e-3, "warmup_steps": 2, "scheduler": "cosine"}, "eval_exact_match": False,
         "peft": {"peft_scheme": "lora", "lora_tuning": {"target_modules": ["all"], "dim": 4, "dropout": 0.1}}}


class LossRecorder(L.Callback):
    def __init__(self, stop_after_epoch=None):
        self.losses, self.stop_after_epoch = [], stop_after_epoch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer, module):
        if self.stop_after_epoch is not None and trainer.current_epoch + 1 >= self.stop_after_epoch:
            trainer.should_stop = True


def run(tiny_task, out_dir, stop_after=None, ckpt=None):
    L.seed_everything(0, verbose=False)
    module = build_model(OmegaConf.create(MODEL))
    data = build_data(OmegaConf.create({"train_ds": {"file_names": [tiny_task["train"]], "micro_batch_size": 8,
                                                     "max_seq_length": 32}}), module.tokenizer, module.model)
    trainer_cfg = OmegaConf.create({"accelerator": "cpu", "max_epochs": 4, "logger": False,
                                    "enable_progress_bar": False, "enable_model_summary": False,
                                    "limit_val_batches": 0})
    trainer = build_trainer(trainer_cfg, out_dir, OmegaConf.create({"save_last": True, "save_top_k": 0}))
    recorder = LossRecorder(stop_after)
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    return recorder.losses, module


def test_resume_reproduces_uninterrupted_loss_curve(tiny_task, tmp_path):
    full, _ = run(tiny_task, str(tmp_path / "full"))
    first, _ = run(tiny_task, str(tmp_path / "part"), stop_after=2)
    ckpt = os.path.join(tmp_path, "part", "checkpoints", "last.ckpt")
    rest, _ = run(tiny_task, str(tmp_path / "resumed"), ckpt=ckpt)
    assert len(full) == 16 and len(first) == 8 and len(rest) == 8
    assert full[-1] < full[0]  # it learns
    torch.testing.assert_close(torch.tensor(first + rest), torch.tensor(full), rtol=0, atol=1e-6)


def test_checkpoint_holds_adapters_and_optimizer_only(tiny_task, tmp_path):
    _, module = run(tiny_task, str(tmp_path / "part"), stop_after=1)
    ckpt = torch.load(os.path.join(tmp_path, "part", "checkpoints", "last.ckpt"), weights_only=True)
    assert ckpt["state_dict"] and all(".adapters." in k for k in ckpt["state_dict"])
    assert set(ckpt["state_dict"]) == {f"model.{k}" for k in module.model.adapter_state_dict()}
    assert ckpt["optimizer_states"][0]["state"]  # AdamW moments are there
    assert ckpt["nemo_peft_adapters"]["default"][0]["method"] == "lora"
