"""The project's own base-model format: config.json + model.safetensors + tokenizer.json.

``config.json`` holds ``{"format": "nemo_peft_<family>", "config": {...}}``: the format names
the model family (its descriptor in ``nemo_peft.families`` says which classes read it), so
this module reads and writes every family the same way.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.data.tokenizer import Tokenizer

FORMAT_PREFIX = "nemo_peft_"


def format_of(meta) -> str | None:
    """The native format named by a parsed config.json (``nemo_peft_<family>``), or None."""
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX) else None


def read_format(directory: str) -> str | None:
    """The native format of a model directory, or None when it is not one of ours."""
    cfg = os.path.join(str(directory), "config.json")
    if not os.path.isfile(cfg):
        return None
    with open(cfg, encoding="utf-8") as f:
        return format_of(json.load(f))


def save_model(model, directory: str, tokenizer: Tokenizer | None = None, *, fmt: str) -> None:
    """Base weights only (adapters are saved separately with save_adapters), as format ``fmt``."""
    if format_of({"format": fmt}) is None:
        raise ValueError(f"format={fmt!r}; a nemo_peft model format starts with {FORMAT_PREFIX!r}.")
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".adapters." not in k}
    atomic_write(os.path.join(directory, "model.safetensors"), lambda tmp: save_file(tensors, tmp))

    def write_cfg(tmp):
        with open(tmp, "w") as f:
            json.dump({"format": fmt, "config": model.config.to_dict()}, f, indent=2)
    atomic_write(os.path.join(directory, "config.json"), write_cfg)
    if tokenizer is not None:
        tokenizer.save(directory)  # with chat_template.jinja when the tokenizer has a template


def load_model(directory: str, model_cls: type, config_cls: type, dtype: torch.dtype = torch.float32):
    """(model, tokenizer or None) of a native directory whose format is ``model_cls``'s family."""
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        meta = json.load(f)
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
