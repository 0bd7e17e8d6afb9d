"""The data inspector behind ``examples/inspect_data.py``: a few examples as the model sees them, with
the trained tokens marked, and a summary of every configured split (what was read, dropped, cut,
left untrained; lengths; padding unpacked vs packed)."""
from __future__ import annotations

import sys

from omegaconf import DictConfig

from nemo_peft.data.summary import end_ids, summarize
from nemo_peft.recipes.build import build_data, check_section_keys, load_base

SPLITS = (("train", "train_ds"), ("validation", "validation_ds"), ("test", "test_ds"), ("predict", "predict_ds"))


def marked(tokenizer, ids: list[int], mask: list[int], color: bool) -> str:
    """The decoded example with trained spans in ⟦ ⟧ (green on a terminal); special tokens shown."""
    out, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or bool(mask[t]) != bool(mask[start]):
            text = tokenizer.decode(ids[start:t], skip_special_tokens=False)
            if mask[start]:
                text = f"\033[32m⟦{text}⟧\033[0m" if color else f"⟦{text}⟧"
            out.append(text)
            start = t
    return "".join(out)


def run_inspect(cfg: DictConfig) -> dict:
    check_section_keys(cfg, ("model", "data", "num_examples", "split", "color"), "the inspect_data config")
    model, tokenizer = load_base(cfg.model)
    data = build_data(cfg.data, tokenizer, model)
    color = cfg.get("color") if cfg.get("color") is not None else sys.stdout.isatty()
    stops = end_ids(tokenizer, (cfg.model.get("generation") or {}).get("stop_token_ids"))
    summaries = {}
    for split, key in SPLITS:
        if data.configs[split] is None:
            continue
        dataset = data._dataset(split)
        summaries[split] = summarize(dataset, split, stops, int(data.configs[split]["micro_batch_size"]))
        if split == cfg.get("split", "train"):
            shown = min(int(cfg.get("num_examples", 3)), len(dataset))
            print(f"== {shown} of {len(dataset)} {split} examples (trained tokens in ⟦ ⟧) ==")
            for i in range(shown):
                item = dataset[i]
                print(f"-- {split}[{i}]: {len(item['input_ids'])} tokens, {int(sum(item['loss_mask']))} trained")
                print(marked(tokenizer, item["input_ids"], item["loss_mask"], color))
    print("== summary ==")
    for summary in summaries.values():
        print(summary.line())
    return summaries
