"""One entry point for base models: ``load_pretrained(path)`` picks the format."""
from __future__ import annotations

import json
import os

import torch

from nemo_peft.convert import native


def _directory_kind(path: str) -> str:
    """'native', 'hf', or a ValueError saying why ``path`` is neither."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(
            f"{path!r} is not a model directory: it has no config.json. Pass a GGUF file, a nemo_peft "
            "model directory (convert.native.save_model), or a Hugging Face checkpoint directory "
            "(config.json + model.safetensors, as written by save_pretrained)."
        )
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path!r} is not valid JSON ({e}).") from None
    if native.format_of(cfg):
        return "native"
    if isinstance(cfg, dict) and "model_type" in cfg:
        from nemo_peft.convert.hf_t5 import is_hf_t5_config

        return "hf_t5" if is_hf_t5_config(cfg) else "hf"
    raise ValueError(
        f"{cfg_path!r} is neither a nemo_peft model config (format one of {sorted(native.MODEL_CLASSES)}) nor a Hugging Face "
        "config.json (it has no 'model_type'), so this directory cannot be loaded."
    )


def load_pretrained(path: str | None, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from a GGUF file, our native directory (GPT or T5), or a Hugging Face
    directory (GPT-style families, or T5/mT5).

    ``None`` or ``"default"`` means the embedded SmolLM2-135M-Instruct GGUF file.
    """
    from nemo_peft.convert.gguf import gguf_default_path, load_gguf

    if path in (None, "", "default"):
        path = gguf_default_path()
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Model path {path!r} does not exist. Set model.restore_from_path to a GGUF file, "
            "a nemo_peft model directory (config.json + model.safetensors), a Hugging Face "
            "checkpoint directory, or null for the embedded SmolLM2-135M-Instruct."
        )
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            return load_gguf(path, dtype=dtype)
        raise ValueError(f"Model file {path!r} is not a .gguf file; pass a GGUF file or a model directory.")
    kind = _directory_kind(path)
    if kind == "native":
        return native.load_model(path, dtype=dtype)
    if kind == "hf_t5":
        from nemo_peft.convert.hf_t5 import load_hf_t5

        return load_hf_t5(path, dtype=dtype)
    from nemo_peft.convert.hf import load_hf

    return load_hf(path, dtype=dtype)
