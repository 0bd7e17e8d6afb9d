"""The adapter export recipe behind ``examples/export.py``: our adapters <-> Hugging Face PEFT directories."""
from __future__ import annotations

from nemo_peft.families import load_adapters, load_hf_peft, load_pretrained, save_hf_peft


def to_hf_peft(base: str | None, adapter_dir: str, output_dir: str, base_model_name: str | None = None,
               name: str | None = None, model_type: str | None = None) -> dict:
    """Load ``base`` (GGUF / HF dir / native dir) and our adapter from ``adapter_dir``; write adapter
    ``name`` as an HF PEFT directory. ``base_model_name`` goes into ``base_model_name_or_path``
    (default: ``base`` itself). Returns the adapter_config written."""
    model, _ = load_pretrained(base)
    names = load_adapters(model, adapter_dir, name=name)
    if len(names) > 1:
        raise ValueError(f"{adapter_dir!r} holds adapters {names}; pick one with --name.")
    config = save_hf_peft(model, output_dir, base_model_name or str(base or "default"), name=names[0],
                          model_type=model_type)
    print(f"wrote HF PEFT adapter {names[0]!r} (r={config['r']}, lora_alpha={config['lora_alpha']}, "
          f"targets {config['target_modules']}) to {output_dir}")
    return config


def from_hf_peft(base: str | None, hf_peft_dir: str, output_dir: str, name: str = "default") -> str:
    """Load ``base`` and the HF PEFT LoRA in ``hf_peft_dir``; save it as our adapter ``name`` in ``output_dir``."""
    model, _ = load_pretrained(base)
    load_hf_peft(model, hf_peft_dir, name=name)
    model.save_adapters(output_dir, name)
    print(f"wrote adapter {name!r} ({len(model.adapter_configs(name))} LoRA config(s)) to {output_dir}")
    return name
