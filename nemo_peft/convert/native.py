"""The project's own base-model format: config.json + model.safetensors + tokenizer.json.

``config.json`` holds ``{"format": "nemo_peft_gpt" | "nemo_peft_t5", "config": {...}}``: the
format names the model class, so one loader reads GPT-style and T5-style models.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.models.t5 import T5Config, T5Model

FORMAT = "nemo_peft_gpt"
T5_FORMAT = "nemo_peft_t5"
MODEL_CLASSES = {FORMAT: (GPTModel, GPTConfig), T5_FORMAT: (T5Model, T5Config)}


def format_of(meta) -> str | None:
    """The native format named by a parsed config.json, or None if it is not ours."""
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if fmt in MODEL_CLASSES else None


def is_native_dir(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return format_of(json.load(f)) is not None


def save_model(model: GPTModel | T5Model, directory: str, tokenizer: Tokenizer | None = None) -> None:
    """Base weights only (adapters are saved separately with save_adapters)."""
    fmt = next((f for f, (cls, _) in MODEL_CLASSES.items() if isinstance(model, cls)), None)
    if fmt is None:
        raise TypeError(f"save_model writes GPTModel or T5Model, not {type(model).__name__}.")
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".adapters." not in k}
    atomic_write(os.path.join(directory, "model.safetensors"), lambda tmp: save_file(tensors, tmp))

    def write_cfg(tmp):
        with open(tmp, "w") as f:
            json.dump({"format": fmt, "config": model.config.to_dict()}, f, indent=2)
    atomic_write(os.path.join(directory, "config.json"), write_cfg)
    if tokenizer is not None:
        tokenizer.save(directory)


def load_model(directory: str, dtype: torch.dtype = torch.float32) -> tuple[GPTModel | T5Model, Tokenizer | None]:
    with open(os.path.join(directory, "config.json")) as f:
        meta = json.load(f)
    fmt = format_of(meta)
    if fmt is None:
        raise ValueError(f"{directory!r}/config.json has format={meta.get('format')!r}; "
                         f"a nemo_peft model directory has one of {sorted(MODEL_CLASSES)}.")
    model_cls, config_cls = MODEL_CLASSES[fmt]
    model = model_cls(config_cls.from_dict(meta["config"]))
    weights = os.path.join(directory, "model.safetensors")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"Cannot read {weights!r} ({e}); the file is missing, damaged or truncated.") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights!r} does not fit its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    tok = Tokenizer.from_dir(directory) if os.path.isfile(os.path.join(directory, "tokenizer.json")) else None
    return model.to(dtype).eval(), tok
