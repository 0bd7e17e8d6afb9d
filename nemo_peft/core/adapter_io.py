"""The native adapter checkpoint: ``adapter_config.json`` + ``adapter_weights.safetensors``.

Files are written to a temp name and renamed, so a failed save never leaves a
half-written file in place of a good one.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_weights.safetensors"
FORMAT = "nemo_peft"


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(path: str, configs: dict, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(os.path.join(path, WEIGHTS_NAME), lambda tmp: save_file(tensors, tmp))

    def write_json(tmp):
        with open(tmp, "w") as f:
            json.dump({"format": FORMAT, "version": 1, "adapters": configs}, f, indent=2)
    atomic_write(os.path.join(path, CONFIG_NAME), write_json)


def load(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = os.path.dirname(path) if path.endswith(".safetensors") else path
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Adapter checkpoint {path!r} does not exist. Pass the directory written by "
            f"save_adapters (it holds {CONFIG_NAME} and {WEIGHTS_NAME})."
        )
    config_path, weights_path = os.path.join(directory, CONFIG_NAME), os.path.join(directory, WEIGHTS_NAME)
    meta = read_config(directory)
    if meta is None or not os.path.isfile(weights_path):
        missing = config_path if meta is None else weights_path
        raise FileNotFoundError(f"{missing!r} is missing: {directory!r} is not a complete adapter checkpoint "
                                "written by save_adapters.")
    if is_hf_peft_config(meta):
        raise ValueError(f"{config_path!r} is a Hugging Face PEFT adapter (peft_type={meta['peft_type']!r}); load it "
                         "with nemo_peft.load_adapters(model, path), which converts it, or "
                         "nemo_peft.convert.hf_peft.load_hf_peft.")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_path!r} is not a nemo_peft adapter config (format={meta.get('format')!r}).")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"Cannot read {weights_path!r} ({e}); the file is damaged or truncated — "
                         "save the adapter again.") from None
    return meta["adapters"], tensors


def read_config(directory: str) -> dict | None:
    """The parsed adapter_config.json of ``directory``, or None when there is none."""
    path = os.path.join(str(directory), CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        raise ValueError(f"{path!r} holds {type(meta).__name__}, not an adapter config object.")
    return meta


def is_hf_peft_config(meta: dict) -> bool:
    """peft's adapter_config.json names a ``peft_type``; ours has ``format: nemo_peft``."""
    return "peft_type" in meta and meta.get("format") != FORMAT


def copy_checked(own: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``loaded`` into the model's tensors ``own``; names and shapes must agree exactly."""
    missing, unexpected = sorted(set(own) - set(loaded)), sorted(set(loaded) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"Adapter weights in {source!r} do not fit this model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}. Load into a model of the same architecture "
            "and adapter config."
        )
    for k, t in own.items():
        if t.shape != loaded[k].shape:
            raise ValueError(f"Adapter tensor {k!r} in {source!r} has shape {tuple(loaded[k].shape)} but "
                             f"the model's is {tuple(t.shape)}; the adapter was made for another model or rank.")
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(loaded[k])
