"""The merge recipe behind ``examples/merge.py``: base + adapter -> one merged checkpoint."""
from __future__ import annotations

import time

from nemo_peft.families import load_adapters, load_pretrained, save_hf, save_model


def merge_to_checkpoint(base: str | None, adapter_dir: str, output_dir: str, fmt: str = "hf",
                        model_type: str | None = None) -> float:
    """Fold every adapter in ``adapter_dir`` (ours or HF PEFT) into ``base`` and write the
    result as an HF directory (``fmt="hf"``, what transformers and vLLM load) or our
    native format. Returns the merge time in seconds."""
    if fmt not in ("hf", "native"):
        raise ValueError(f"format={fmt!r}; use 'hf' or 'native'.")
    model, tokenizer = load_pretrained(base)
    load_adapters(model, adapter_dir)
    start = time.perf_counter()
    model.merge_adapters()
    seconds = time.perf_counter() - start
    if fmt == "hf":
        save_hf(model, output_dir, tokenizer, model_type=model_type)
    else:
        save_model(model, output_dir, tokenizer)
    print(f"merged {model.merged_adapters} in {seconds:.3f}s; wrote {fmt} checkpoint to {output_dir}")
    return seconds
