"""One entry point for base models: ``load_pretrained(path)`` picks the format."""
from __future__ import annotations

import os

import torch

from nemo_peft.convert import native


def load_pretrained(path: str | None, dtype: torch.dtype = torch.float32):
    """Load (model, tokenizer) from a GGUF file, or our native directory.

    ``None`` or ``"default"`` means the embedded SmolLM2-135M-Instruct GGUF file.
    """
    from nemo_peft.convert.gguf import gguf_default_path, load_gguf

    if path in (None, "", "default"):
        path = gguf_default_path()
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Model path {path!r} does not exist. Set model.restore_from_path to a GGUF file, "
            "a nemo_peft model directory (config.json + model.safetensors), or null for the "
            "embedded SmolLM2-135M-Instruct."
        )
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            return load_gguf(path, dtype=dtype)
        raise ValueError(f"Model file {path!r} is not a .gguf file; pass a GGUF file or a model directory.")
    if native.is_native_dir(path):
        return native.load_model(path, dtype=dtype)
    raise ValueError(
        f"{path!r} is not a model directory this version can read: it needs a config.json written "
        "by nemo_peft (convert.native.save_model). Hugging Face directories are read by "
        "nemo_peft.convert.hf once that importer is available."
    )
