#!/usr/bin/env python
"""Pre-train the small T5 that ``model=t5`` starts from (no pretrained T5 is available offline).

Full training (every weight) of a T5 v1.1-style encoder-decoder with the byte-level tokenizer, from a
seeded initialisation, in a seeded data order, on one thread: the same machine and torch give the same
weights. Two stages:

1. the bundled ``date_reformat`` task (``Date: 2023-05-07 ->`` to ``7 May 2023``), ``--steps`` steps;
2. ``--tag-steps`` more on ``date_reformat`` mixed with ``date_us`` behind a tag
   (``US Date: 2023-05-07 ->`` to ``May 7, 2023``): the base can write US dates, but only when asked
   by the tag, so the plain ``date_us`` prompt gets the day-first answer (0% exact match).

The result is saved in our native format (config.json, model.safetensors, tokenizer.json) and ships
with the package as ``nemo_peft/data/bundled/t5_dates``; ``python examples/finetune.py model=t5``
then adapts it to the plain ``date_us`` prompt. Why stage 2: prompt tuning only steers what a model
can already do. On a base trained on stage 1 alone (it never wrote a US date), 10-50 soft tokens
trained for 600-1500 steps stayed at 0% on date_us, while LoRA reached 83%.

    python examples/pretrain_t5.py                    # rebuild the bundled base (a few CPU minutes)
    python examples/pretrain_t5.py --output my_t5 --steps 300 --tag-steps 100
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
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


US_TAG = "US "  # stage 2's date_us inputs: "US Date: 2023-05-07 ->"


def tagged_us_file(split_name: str, directory: str) -> str:
    """date_us's ``split_name`` with ``US_TAG`` in front of every input."""
    path = os.path.join(directory, f"date_us_tagged_{split_name}.jsonl")
    with open(bundled_path(f"date_us/{split_name}.jsonl")) as src, open(path, "w") as out:
        for line in src:
            row = json.loads(line)
            out.write(json.dumps({"input": US_TAG + row["input"], "output": row["output"]}) + "\n")
    return path


def split(files: list[str], micro_batch_size: int, **extra) -> dict:
    return {"file_names": files, "context_key": "input", "label_key": "output", "max_seq_length": 32,
            "max_target_length": 24, "add_eos": True, "micro_batch_size": micro_batch_size, **extra}


def train(model, tokenizer, train_files: list[str], test_file: str, steps: int, lr: float, seed: int):
    """Train every weight of ``model`` for ``steps`` steps; held-out exact match % on ``test_file``."""
    L.seed_everything(seed, verbose=False)
    model.train()
    module = T5SFTModel(model, tokenizer, optim={"lr": lr, "warmup_steps": 50, "scheduler": "cosine",
                                                 "min_lr": lr / 10, "weight_decay": 0.0},
                        generation={"max_new_tokens": 24})
    data = Seq2SeqDataModule(tokenizer, train_ds=split(train_files, 32, shuffle=True, seed=seed),
                             test_ds=split([test_file], 50))
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=data)
    return trainer.test(module, datamodule=data, verbose=False)[0]["test_exact_match"]


def pretrain(steps: int, tag_steps: int, lr: float, seed: int = 0):
    """(model, tokenizer, {held-out exact match %}) after both stages, from a fresh model."""
    model, tokenizer = load_base(OmegaConf.create({"arch": "t5", "from_scratch": ARCHITECTURE, "init_seed": seed}))
    reformat = [bundled_path("date_reformat/train.jsonl")]
    exact = {"date_reformat": train(model, tokenizer, reformat, bundled_path("date_reformat/test.jsonl"), steps, lr,
                                    seed)}
    if tag_steps:
        with tempfile.TemporaryDirectory() as tmp:
            tagged = [tagged_us_file("train", tmp)]
            exact["US Date: (tagged date_us)"] = train(model, tokenizer, reformat + tagged,
                                                       tagged_us_file("test", tmp), tag_steps, lr / 3, seed)
    return model, tokenizer, exact


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=BUNDLED, help="model directory to write (default: the bundled base)")
    parser.add_argument("--steps", type=int, default=3000, help="stage 1: date_reformat")
    parser.add_argument("--tag-steps", type=int, default=1500, help="stage 2: date_reformat + tagged date_us")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet_third_party()
    torch.set_num_threads(1)  # one thread: the sums run in one order, so a rerun gives the same weights
    start = time.perf_counter()
    model, tokenizer, exact = pretrain(args.steps, args.tag_steps, args.lr, args.seed)
    minutes = (time.perf_counter() - start) / 60
    params = sum(p.numel() for p in model.parameters())
    save_model(model, args.output, tokenizer)
    scores = ", ".join(f"{task} {em:.1f}%" for task, em in exact.items())
    print(f"pre-trained T5 ({params:,} parameters, {args.steps} + {args.tag_steps} steps, {minutes:.1f} min): "
          f"held-out exact match {scores}; saved to {os.path.normpath(args.output)}")


if __name__ == "__main__":
    main()
