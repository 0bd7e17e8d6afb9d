"""Checkpoints in and out, whatever the family: base models (GGUF, Hugging Face, native),
adapters (native or Hugging Face PEFT) and exports. Each call asks the model's family."""
from __future__ import annotations

import os

import torch

from nemo_peft.convert import hf_peft, native
from nemo_peft.convert.gguf import gguf_default_path
from nemo_peft.convert.hf_dir import read_json
from nemo_peft.convert.source_id import hub_cache_id
from nemo_peft.core.adapter_io import is_hf_peft_config, read_config
from nemo_peft.families.base import FAMILIES, family_of, family_of_format, family_of_hf_type, unwrap

_KINDS = ("a GGUF file, a nemo_peft model directory (config.json + model.safetensors), or a Hugging Face "
          "checkpoint directory")


def _read_config_json(path: str) -> dict:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{path!r} is not a model directory: it has no config.json. Pass {_KINDS} "
                         "(config.json + model.safetensors, as written by save_pretrained).")
    return read_json(cfg_path)


def load_pretrained(path: str | None, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a GGUF file, our native directory or a Hugging Face directory, of
    any registered family. ``None`` or ``"default"`` means the embedded SmolLM2-135M-Instruct GGUF.
    The model remembers its tokenizer's vocabulary hash (adapters record it)."""
    path = _resolve(path)
    model, tokenizer = _load_base(path, dtype)
    remember_tokenizer(model, tokenizer)
    remember_source(model, path)
    return model, tokenizer


def remember_tokenizer(model, tokenizer) -> None:
    """Record the tokenizer's vocabulary hash on the model, for adapter fingerprints."""
    if tokenizer is not None:
        model.tokenizer_vocab_sha256 = tokenizer.vocab_sha256()


def remember_source(model, path: str) -> None:
    """Record what HF-PEFT exports name as their base (``base_model_name_or_path``): the Hub id a GGUF
    file's metadata or a Hub-cache directory spells, else the path loaded."""
    found = model.config.extra.get("hf_repo") if os.path.isfile(path) else hub_cache_id(path)
    model.base_model_name_or_path = found or path


def _resolve(path: str | None) -> str:
    if path in (None, "", "default"):
        return gguf_default_path()
    return os.path.expanduser(str(path))


def _load_base(path: str, dtype: torch.dtype):
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model path {path!r} does not exist. Set model.restore_from_path to {_KINDS}, "
                                "or null for the embedded SmolLM2-135M-Instruct.")
    if os.path.isfile(path):
        gguf_loaders = [f.load_gguf for f in FAMILIES.values() if f.load_gguf is not None]
        if not path.endswith(".gguf") or not gguf_loaders:
            raise ValueError(f"Model file {path!r} is not a .gguf file; pass a GGUF file or a model directory.")
        return gguf_loaders[0](path, dtype=dtype)
    cfg = _read_config_json(path)
    fmt = native.format_of(cfg)
    if fmt is not None:
        family = family_of_format(fmt)
        return native.load_model(path, family.model_cls, family.config_cls, dtype=dtype)
    if "model_type" not in cfg:
        raise ValueError(f"{os.path.join(path, 'config.json')!r} is neither a nemo_peft model config (format one of "
                         f"{sorted(f.native_format for f in FAMILIES.values())}) nor a Hugging Face config.json "
                         "(it has no 'model_type'), so this directory cannot be loaded.")
    family = family_of_hf_type(cfg["model_type"])
    if family is None:
        supported = [t for f in FAMILIES.values() for t in f.hf_model_types]
        raise ValueError(f"{path!r}: model_type={cfg['model_type']!r} is not supported; supported: "
                         f"{', '.join(supported)}.")
    return family.needs("load_hf")(path, dtype=dtype)


def save_model(model, directory: str, tokenizer=None) -> None:
    """Base weights in our native format (adapters are saved separately with save_adapters)."""
    model = unwrap(model)
    native.save_model(model, directory, tokenizer, fmt=family_of(model).native_format)


def save_hf(model, directory: str, tokenizer=None, model_type: str | None = None) -> None:
    """A transformers checkpoint of the base weights (merge adapters first to include them)."""
    model = unwrap(model)
    family_of(model).needs("save_hf")(model, directory, tokenizer, model_type=model_type)


def save_hf_peft(model, directory: str, base_model_name_or_path: str | None = None, name: str = "default",
                 model_type: str | None = None) -> dict:
    """LoRA adapter ``name`` as a Hugging Face PEFT directory (``peft`` and vLLM load it).
    ``base_model_name_or_path`` defaults to what ``load_pretrained`` remembered (the GGUF's Hub id)."""
    model = unwrap(model)
    base_model_name_or_path = base_model_name_or_path or getattr(model, "base_model_name_or_path", None)
    if not base_model_name_or_path:
        raise ValueError("This model was not loaded from a checkpoint (load_pretrained), so its base has no "
                         "name; pass base_model_name_or_path (export.py: --base-model-name), e.g. the Hub id.")
    return hf_peft.save_hf_peft(model, family_of(model).needs("hf_peft"), directory, base_model_name_or_path, name,
                                model_type=model_type)


def load_hf_peft(model, directory: str, name: str = "default", strict_base: bool = True) -> str:
    """A Hugging Face PEFT LoRA directory into ``model`` as adapter ``name`` (exactly)."""
    model = unwrap(model)
    return hf_peft.load_hf_peft(model, family_of(model).needs("hf_peft"), directory, name=name,
                                strict_base=strict_base)


def load_adapters(model, path: str, cfg=None, name: str | None = None, strict_base: bool = True) -> list[str]:
    """``model.load_adapters`` for our format, or the conversion of a Hugging Face PEFT directory.
    An adapter trained on another base is an error unless ``strict_base=False`` (then a warning)."""
    meta = read_config(path) if os.path.isdir(str(path)) else None
    if meta is not None and is_hf_peft_config(meta):
        if cfg is not None:
            raise ValueError(f"{path!r} is a Hugging Face PEFT adapter: its adapter_config.json defines the "
                             "adapter, so a cfg override cannot be applied; drop cfg.")
        return [load_hf_peft(model, path, name=name or "default", strict_base=strict_base)]
    return unwrap(model).load_adapters(path, cfg, name, strict_base=strict_base)
