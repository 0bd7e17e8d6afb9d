"""The fine-tuning recipe behind ``examples/finetune.py``."""
from __future__ import annotations

import os

import lightning as L
from omegaconf import DictConfig

from nemo_peft.recipes.build import build_data, build_model, build_trainer


def _exact_match(trainer, module, data) -> float | None:
    if not module.eval_exact_match or data.configs["test"] is None:
        return None
    result = trainer.test(module, datamodule=data, verbose=False)
    return result[0].get("test_exact_match") if result else None


def run_finetune(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.get("seed", 1234), verbose=False)
    out_dir = cfg.exp_manager.output_dir
    module = build_model(cfg.model)
    print(module.model.trainable_parameters_summary().splitlines()[-1])
    data = build_data(cfg.data, module.tokenizer, module.model)
    trainer = build_trainer(cfg.trainer, out_dir, cfg.exp_manager.get("checkpoint"))

    before = _exact_match(trainer, module, data) if cfg.get("eval_before", True) else None
    ckpt = cfg.exp_manager.get("resume_from_checkpoint")
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    after = _exact_match(trainer, module, data)

    adapter_dir = cfg.exp_manager.get("adapter_dir") or os.path.join(out_dir, "adapter")
    module.save_adapters(adapter_dir)
    size = sum(os.path.getsize(os.path.join(adapter_dir, f)) for f in os.listdir(adapter_dir))
    if before is not None or after is not None:
        print(f"held-out exact match: before {_fmt(before)} -> after {_fmt(after)}")
    print(f"adapter saved to {adapter_dir} ({size / 1e6:.2f} MB)")
    return {"exact_match_before": before, "exact_match_after": after, "adapter_dir": adapter_dir,
            "adapter_bytes": size, "trainer": trainer, "module": module}


def _fmt(x):
    return "n/a" if x is None else f"{x:.1f}%"
