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
    module.add_stop_token_ids(data.stop_token_ids(["predict"]))  # e.g. the chat template's end of turn
    trainer = build_trainer(cfg.trainer, os.path.dirname(os.path.abspath(cfg.output_file)))
    batches = trainer.predict(module, datamodule=data)
    rows = [row for batch in batches for row in batch]

    def write(tmp):
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    atomic_write(cfg.output_file, write)
    summary = exact_match_summary(rows)
    if summary:
        print(summary)
    print(f"wrote {len(rows)} predictions to {cfg.output_file}")
    return rows


def exact_match_summary(rows: list[dict]) -> str | None:
    """Exact match over the rows with a non-empty label, saying how many were scored; None when no row
    has one (a prompt-only file, or one with empty outputs, has nothing to score: no fake 0%)."""
    scored = [r for r in rows if isinstance(r.get("label"), str) and r["label"].strip()]
    if not scored:
        return None
    em = 100.0 * sum(r["prediction"].strip() == r["label"].strip() for r in scored) / len(scored)
    of = "" if len(scored) == len(rows) else f" of {len(rows)} (only rows with a label are scored)"
    return f"exact match: {em:.1f}% on {len(scored)} examples{of}"
