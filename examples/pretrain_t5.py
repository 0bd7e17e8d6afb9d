#!/usr/bin/env python
"""Pre-train the small T5 that ``model=t5`` starts from (no pretrained T5 is available offline).

Full training (every weight) of a T5 v1.1-style encoder-decoder with the byte-level tokenizer on the
bundled ``date_reformat`` task (``Date: 2023-05-07 ->`` to ``7 May 2023``), from a seeded initialisation,
in a seeded data order, on one thread: the same machine and torch give the same weights. The result is
saved in our native format (config.json, model.safetensors, tokenizer.json) and ships with the package
as ``nemo_peft/data/bundled/t5_dates``; ``python examples/finetune.py model=t5`` then adapts it with LoRA
to a second task it was not trained on (``date_us``: ``May 7, 2023``).

    python examples/pretrain_t5.py                    # rebuild the bundled base (a few CPU minutes)
    python examples/pretrain_t5.py --output my_t5 --steps 300
"""
from __future__ import annotations

import argparse
import os
import time

import lightning as L
import torch
from omegaconf import OmegaConf

from nemo_peft import Seq2SeqDataModule, T5SFTModel, bundled_path, save_model
from nemo_peft.recipes.build import load_base
from nemo_peft.recipes.run_log import quiet_third_party

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "nemo_peft", "data", "bundled", "t5_dates")
ARCHITECTURE = {"d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 2, "num_heads": 4,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}


def split(name: str, micro_batch_size: int, **extra) -> dict:
    return {"file_names": [bundled_path(f"date_reformat/{name}.jsonl")], "context_key": "input",
            "label_key": "output", "max_seq_length": 32, "max_target_length": 24, "add_eos": True,
            "micro_batch_size": micro_batch_size, **extra}


def pretrain(steps: int, lr: float, seed: int = 0):
    """(module, held-out exact match %) after ``steps`` full-training steps from a fresh model."""
    model, tokenizer = load_base(OmegaConf.create({"arch": "t5", "from_scratch": ARCHITECTURE, "init_seed": seed}))
    model.train()
    module = T5SFTModel(model, tokenizer, optim={"lr": lr, "warmup_steps": 50, "scheduler": "cosine",
                                                 "min_lr": lr / 10, "weight_decay": 0.0},
                        generation={"max_new_tokens": 24})
    data = Seq2SeqDataModule(tokenizer, train_ds=split("train", 32, shuffle=True, seed=seed), test_ds=split("test", 50))
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=data)
    result = trainer.test(module, datamodule=data, verbose=False)[0]
    return module, result["test_exact_match"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=BUNDLED, help="model directory to write (default: the bundled base)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_third_party()
    torch.set_num_threads(1)  # one thread: the sums run in one order, so a rerun gives the same weights
    L.seed_everything(args.seed, verbose=False)
    start = time.perf_counter()
    module, exact = pretrain(args.steps, args.lr, args.seed)
    minutes = (time.perf_counter() - start) / 60
    params = sum(p.numel() for p in module.model.parameters())
    save_model(module.model, args.output, module.tokenizer)
    print(f"pre-trained T5 ({params:,} parameters, {args.steps} steps, {minutes:.1f} min): "
          f"date_reformat held-out exact match {exact:.1f}%; saved to {os.path.normpath(args.output)}")


if __name__ == "__main__":
    main()
