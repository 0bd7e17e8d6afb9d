"""The project's own base-model format: config.json + model.safetensors + tokenizer.json."""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt import GPTConfig, GPTModel

FORMAT = "nemo_peft_gpt"


def is_native_dir(path: str) -> bool:
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    with open(cfg) as f:
        return json.load(f).get("format") == FORMAT


def save_model(model: GPTModel, directory: str, tokenizer: Tokenizer | None = None) -> None:
    """Base weights only (adapters are saved separately with save_adapters)."""
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".adapters." not in k}
    atomic_write(os.path.join(directory, "model.safetensors"), lambda tmp: save_file(tensors, tmp))

    def write_cfg(tmp):
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, "config": model.config.to_dict()}, f, indent=2)
    atomic_write(os.path.join(directory, "config.json"), write_cfg)
    if tokenizer is not None:
        tokenizer.save(directory)


def load_model(directory: str, dtype: torch.dtype = torch.float32) -> tuple[GPTModel, Tokenizer | None]:
    with open(os.path.join(directory, "config.json")) as f:
        meta = json.load(f)
    model = GPTModel(GPTConfig.from_dict(meta["config"]))
    weights = os.path.join(directory, "model.safetensors")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"Cannot read {weights!r} ({e}); the file is missing, damaged or truncated.") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights!r} does not fit its config.json: missing {missing[:5]}, unexpected {unexpected[:5]}.")
    tok = Tokenizer.from_dir(directory) if os.path.isfile(os.path.join(directory, "tokenizer.json")) else None
    return model.to(dtype), tok
