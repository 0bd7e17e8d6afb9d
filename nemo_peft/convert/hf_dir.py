"""Hugging Face checkpoint directories, whatever the model family: config.json, the
(possibly sharded) safetensors weights, tokenizer files with their special ids, and the
shared tail of every export (weights, generation_config.json, tokenizer, config.json).
The family converters (``hf_gpt.py``, ``hf_t5.py``) map names and configs on top."""
from __future__ import annotations

import json
import logging
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nemo_peft.convert.chat_template import write_chat_template
from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.core.json_file import read_json  # noqa: F401  (re-exported for the converters)
from nemo_peft.data.tokenizer import Tokenizer, read_chat_template_file

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
log = logging.getLogger(__name__)


def is_hf_dir(path: str) -> bool:
    """True for a directory whose config.json names a transformers ``model_type``."""
    cfg = os.path.join(str(path), "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        return "model_type" in read_json(cfg)
    except (ValueError, OSError):
        return False


def read_hf_config(directory: str) -> dict:
    if not os.path.exists(directory):
        raise FileNotFoundError(f"Hugging Face checkpoint directory {directory!r} does not exist.")
    if not os.path.isdir(directory):
        raise ValueError(f"{directory!r} is a file; pass the Hugging Face checkpoint directory "
                         "(config.json + model.safetensors).")
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{directory!r} is not a Hugging Face checkpoint: it has no config.json "
                         "(expected config.json + model.safetensors, as written by save_pretrained).")
    hf = read_json(path)
    if "model_type" not in hf:
        hint = " It is a nemo_peft native directory: load it with nemo_peft.load_pretrained." \
            if str(hf.get("format", "")).startswith("nemo_peft") else ""
        raise ValueError(f"{path!r} has no 'model_type', so it is not a transformers config.json.{hint}")
    return hf


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards named in its index."""
    index_path, single = os.path.join(directory, INDEX_NAME), os.path.join(directory, WEIGHTS_NAME)
    weight_map = None
    if os.path.isfile(index_path):
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path!r} has no 'weight_map'; the index is damaged.")
        files = sorted(set(weight_map.values()))
    elif os.path.isfile(single):
        files = [WEIGHTS_NAME]
    else:
        others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth", ".h5", ".msgpack")))
        raise ValueError(
            f"{directory!r} has a config.json but no {WEIGHTS_NAME} or {INDEX_NAME}"
            + (f"; found {others[:3]}: only safetensors weights are read (re-save with "
               "save_pretrained(..., safe_serialization=True))." if others else ", so it holds no model weights."))
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"Weight shard {path!r} listed in {INDEX_NAME} is missing.")
        try:
            part = load_file(path)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise ValueError(f"Cannot read {path!r} ({type(e).__name__}: {e}); the file is damaged or "
                             "truncated — download or save the checkpoint again.") from None
        dup = sorted(tensors.keys() & part.keys())
        if dup:
            raise ValueError(f"Tensors {dup[:3]} appear in more than one shard (again in {path!r}).")
        tensors.update(part)
    if weight_map is not None:
        lost = sorted(set(weight_map) - set(tensors))
        if lost:
            raise ValueError(f"{index_path!r} lists tensors {lost[:5]} that its shards do not contain.")
    return tensors


_SPECIAL = (("bos", "bos_token"), ("eos", "eos_token"), ("pad", "pad_token"))


def special_ids(directory: str, hf: dict, backend) -> tuple[dict, list | None]:
    """bos/eos/pad ids: the tokenizer's own files first, then generation_config.json, then config.json."""
    found = {k: None for k, _ in _SPECIAL}
    sources = []
    if backend is not None:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                d = read_json(path)
                tokens = {k: d.get(t) for k, t in _SPECIAL}
                tokens = {k: v.get("content") if isinstance(v, dict) else v for k, v in tokens.items()}
                sources.append({k: backend.token_to_id(v) if isinstance(v, str) else None for k, v in tokens.items()})
    gen_path = os.path.join(directory, "generation_config.json")
    gen = read_json(gen_path) if os.path.isfile(gen_path) else {}
    all_eos = next((v for v in (gen.get("eos_token_id"), hf.get("eos_token_id")) if isinstance(v, list)), None)
    for d in (gen, hf):
        sources.append({k: (v[0] if isinstance(v, list) and v else v if isinstance(v, int) else None)
                        for k, v in ((k, d.get(f"{k}_token_id")) for k, _ in _SPECIAL)})
    for src in sources:
        for k, v in src.items():
            if found[k] is None and v is not None:
                found[k] = int(v)
    return found, all_eos if all_eos and len(all_eos) > 1 else None


def load_tokenizer(directory: str) -> Tokenizer | None:
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        return None  # slow-tokenizer-only checkpoints (vocab.json / tokenizer.model) are not read
    from tokenizers import Tokenizer as _Backend
    try:
        backend = _Backend.from_file(path)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise ValueError(f"Cannot read {path!r} ({e}); the file is damaged or from an unsupported version.") from None
    template, source = read_hf_chat_template(directory)
    return Tokenizer(backend, chat_template=template, chat_template_source=source)


def read_hf_chat_template(directory: str) -> tuple[str | None, str | None]:
    """(chat template, where it came from) as transformers finds it: chat_template.jinja first, else
    tokenizer_config.json's "chat_template" (a string, or a list of {name, template}: "default")."""
    template, source = read_chat_template_file(directory)
    if template is not None:
        return template, source
    path = os.path.join(directory, "tokenizer_config.json")
    value = read_json(path).get("chat_template") if os.path.isfile(path) else None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" not in named:
            log.warning("%s has chat templates %s but none named 'default'; the tokenizer gets no chat template "
                        "(set the data config's chat_template or chat_template_file for chat data).",
                        path, sorted(str(k) for k in named))
        value = named.get("default")
        source = f"{path} 'chat_template' (the one named 'default')"
    else:
        source = f"{path} 'chat_template'"
    return (value, source) if isinstance(value, str) and value else (None, None)


def save_tokenizer(tok: Tokenizer, directory: str, max_len: int) -> None:
    names = {t: tok.backend.id_to_token(i) for (k, t), i in zip(_SPECIAL, (tok.bos_id, tok.eos_id, tok.pad_id))
             if i is not None}
    atomic_write(os.path.join(directory, "tokenizer.json"), lambda tmp: tok.backend.save(tmp))
    template = write_chat_template(directory, tok)  # apply_chat_template works on the export
    write_json(os.path.join(directory, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
        "clean_up_tokenization_spaces": False, **names, **({"chat_template": template} if template else {})})
    write_json(os.path.join(directory, "special_tokens_map.json"), names)


def write_json(path: str, data: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
    atomic_write(path, write)


def write_checkpoint(directory: str, tensors: dict, hf_config: dict, generation_config: dict,
                     tokenizer: Tokenizer | None, tokenizer_max_len: int) -> None:
    """Write an HF directory: weights, generation_config.json, tokenizer files, config.json last
    (a directory with a config.json is complete). Each file is written atomically."""
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    stale = os.path.join(directory, INDEX_NAME)
    if os.path.isfile(stale):  # an old sharded index would make loaders ignore the new file
        os.remove(stale)
    write_json(os.path.join(directory, "generation_config.json"), generation_config)
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory, tokenizer_max_len)
    write_json(os.path.join(directory, "config.json"), hf_config)
