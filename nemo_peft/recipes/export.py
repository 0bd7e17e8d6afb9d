"""The adapter export recipe behind ``examples/export.py``: our adapters <-> Hugging Face PEFT directories,
and the adapter held in a Lightning checkpoint -> our adapter directory (recovery)."""
from __future__ import annotations

import os

import torch

from nemo_peft.core import adapter_io
from nemo_peft.families import load_adapters, load_hf_peft, load_pretrained, save_hf_peft


def to_hf_peft(base: str | None, adapter_dir: str, output_dir: str, base_model_name: str | None = None,
               name: str | None = None, model_type: str | None = None) -> dict:
    """Load ``base`` (GGUF / HF dir / native dir) and our adapter from ``adapter_dir``; write adapter
    ``name`` as an HF PEFT directory. ``base_model_name`` goes into ``base_model_name_or_path``
    (default: the Hub id the base's GGUF metadata spells, else ``base``'s path). Returns the adapter_config
    written."""
    model, _ = load_pretrained(base)
    names = load_adapters(model, adapter_dir, name=name)
    if len(names) > 1:
        raise ValueError(f"{adapter_dir!r} holds adapters {names}; pick one with --name.")
    config = save_hf_peft(model, output_dir, base_model_name, name=names[0], model_type=model_type)
    print(f"wrote HF PEFT adapter {names[0]!r} (r={config['r']}, lora_alpha={config['lora_alpha']}, "
          f"targets {config['target_modules']}, base {config['base_model_name_or_path']!r}) to {output_dir}")
    return config


def from_hf_peft(base: str | None, hf_peft_dir: str, output_dir: str, name: str = "default") -> str:
    """Load ``base`` and the HF PEFT LoRA in ``hf_peft_dir``; save it as our adapter ``name`` in ``output_dir``."""
    model, _ = load_pretrained(base)
    load_hf_peft(model, hf_peft_dir, name=name)
    model.save_adapters(output_dir, name)
    print(f"wrote adapter {name!r} ({len(model.adapter_configs(name))} LoRA config(s)) to {output_dir}")
    return name


def from_checkpoint(checkpoint: str, output_dir: str, overwrite: bool = False) -> list[str]:
    """Write the adapter(s) held in a Lightning checkpoint of examples/finetune.py (``state_dict`` keys
    ``model.<path>.adapters.<name>.<tensor>`` + their ``nemo_peft_adapters`` configs) as an adapter
    directory. Needs no base model; returns the adapter names."""
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"Checkpoint {checkpoint!r} does not exist; pass a .ckpt written by "
                                "examples/finetune.py, e.g. <output_dir>/checkpoints/last.ckpt.")
    try:  # weights_only: tensors and plain containers, never arbitrary pickled code
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"Cannot read {checkpoint!r} as a Lightning checkpoint ({type(e).__name__}: {e}); "
                         "it is damaged or not a checkpoint of examples/finetune.py.") from None
    configs = ckpt.get("nemo_peft_adapters") if isinstance(ckpt, dict) else None
    if not configs or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{checkpoint!r} holds no nemo_peft adapter (no 'nemo_peft_adapters' configs or no "
                         "'state_dict'); pass a checkpoint written by examples/finetune.py.")
    tensors = {}
    for key, tensor in ckpt["state_dict"].items():
        path = key[len("model."):] if key.startswith("model.") else key
        if ".adapters." in path and path.split(".adapters.", 1)[1].split(".", 1)[0] in configs:
            tensors[path] = tensor
    empty = [n for n in configs if not any(f".adapters.{n}." in k for k in tensors)]
    if empty:
        raise ValueError(f"{checkpoint!r} has configs for adapter(s) {empty} but no weights for them in its "
                         "state_dict; it was not written by examples/finetune.py.")
    if adapter_io.exists(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir!r} already holds an adapter; pass --overwrite to replace it (the old "
                              "one stays until the new one is complete) or pick another --output.")
    adapter_io.save(output_dir, configs, tensors)
    print(f"wrote adapter(s) {list(configs)} ({len(tensors)} tensors, step {ckpt.get('global_step', '?')}) "
          f"from {checkpoint} to {output_dir}")
    return list(configs)
