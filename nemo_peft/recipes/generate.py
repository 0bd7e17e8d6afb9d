"""The generation recipe behind ``examples/generate.py``: Trainer.predict on a JSONL file."""
from __future__ import annotations

import json
import os

from omegaconf import DictConfig

from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.families import load_adapters
from nemo_peft.recipes.build import build_data, build_model, build_trainer, check_section_keys


def run_generate(cfg: DictConfig) -> list[dict]:
    check_section_keys(cfg, ("adapter_path", "strict_base", "output_file", "model", "data", "trainer"),
                       "the generate config")
    module = build_model(cfg.model)  # the adapter file carries its own config
    if cfg.get("adapter_path"):
        load_adapters(module, cfg.adapter_path, strict_base=cfg.get("strict_base", True))
    data = build_data(cfg.data, module.tokenizer, module.model)
    trainer = build_trainer(cfg.trainer, os.path.dirname(os.path.abspath(cfg.output_file)))
    batches = trainer.predict(module, datamodule=data)
    rows = [row for batch in batches for row in batch]

    def write(tmp):
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    atomic_write(cfg.output_file, write)
    if rows and all(r.get("label") is not None for r in rows):
        em = 100.0 * sum(r["prediction"] == r["label"] for r in rows) / len(rows)
        print(f"exact match: {em:.1f}% on {len(rows)} examples")
    print(f"wrote {len(rows)} predictions to {cfg.output_file}")
    return rows
