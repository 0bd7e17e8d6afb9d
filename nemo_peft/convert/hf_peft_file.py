"""Reading and checking a Hugging Face PEFT adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``): which files, which options a plain LoRA can hold exactly, and the
LoRA A/B pairs of each module with its scale."""
from __future__ import annotations

import math
import os
import re
from collections import defaultdict

import torch
from safetensors.torch import load_file

from nemo_peft.core.json_file import read_json, read_json_if_exists

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
LEGACY_WEIGHTS_NAME = "adapter_model.bin"
FINGERPRINT_NAME = "nemo_peft_base.json"  # our side file: the base model's fingerprint (core/fingerprint.py)
PREFIX = "base_model.model."
_KEY_RE = re.compile(r"(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight")
# peft options whose non-default value changes the math in a way a plain LoRA cannot hold
_UNSUPPORTED = ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices", "layer_replication",
                "target_parameters", "alora_invocation_tokens", "use_qalora", "arrow_config", "use_bdlora",
                "velora_config", "monteclora_config", "kasa_config")
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


def read_hf_peft(directory: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, tensors) of an HF PEFT adapter directory, with clear errors."""
    directory = os.path.expanduser(str(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"HF PEFT adapter directory {directory!r} does not exist; pass the directory "
                                f"written by peft's save_pretrained (it holds {CONFIG_NAME} and {WEIGHTS_NAME}).")
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path!r} is missing: {directory!r} is not an HF PEFT adapter directory.")
    config = read_json(config_path)
    weights = os.path.join(directory, WEIGHTS_NAME)
    legacy = os.path.join(directory, LEGACY_WEIGHTS_NAME)
    if os.path.isfile(weights):
        tensors = load_file(weights)
    elif os.path.isfile(legacy):
        tensors = torch.load(legacy, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{directory!r} has {CONFIG_NAME} but no {WEIGHTS_NAME} (or {LEGACY_WEIGHTS_NAME}).")
    return config, tensors


def read_fingerprint(directory: str) -> dict | None:
    """The base fingerprint our export wrote beside the adapter, or None (peft's own files have none)."""
    return read_json_if_exists(os.path.join(str(directory), FINGERPRINT_NAME),
                               " Delete it to load the adapter unchecked.")


def check_config(cfg: dict, source: str) -> None:
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"{source}: peft_type={cfg.get('peft_type')!r} is not supported; only 'LORA' adapters "
                         "can be loaded.")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{source}: bias={cfg['bias']!r} is not supported (the adapter trains base biases); "
                         "only bias='none' can be loaded.")
    for field in _UNSUPPORTED:
        if cfg.get(field):
            raise ValueError(f"{source}: {field}={cfg[field]!r} is not supported; only plain LoRA "
                             f"(with {field} unset) can be loaded exactly.")
    for field in ("r", "lora_alpha"):
        if not isinstance(cfg.get(field), (int, float)) or cfg[field] <= 0:
            raise ValueError(f"{source}: {field}={cfg.get(field)!r}; a LoRA config needs a positive {field}.")
    init = str(cfg.get("init_lora_weights", True)).lower()
    if init.startswith(_BASE_CHANGING_INITS):
        raise ValueError(f"{source}: init_lora_weights={cfg['init_lora_weights']!r} adapters expect a modified "
                         "base model; convert them to plain LoRA with peft's "
                         "path_initial_model_for_weight_conversion first.")


def _pattern_value(patterns: dict, module: str, default):
    """peft's ``get_pattern_key`` lookup for rank_pattern / alpha_pattern."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def parse_lora_tensors(config: dict, tensors: dict, source: str) -> dict:
    """{HF module path: (A, B, scale)} from the file."""
    pairs = defaultdict(dict)
    for key, t in tensors.items():
        m = _KEY_RE.fullmatch(key.removeprefix(PREFIX))
        if m is None:
            raise ValueError(f"{source}: tensor {key!r} is not a LoRA A/B weight of a linear layer; only those "
                             "can be loaded (no embedding LoRA, DoRA magnitudes or trained biases).")
        pairs[m.group(1)][m.group(2)] = t
    out = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{source}: module {module!r} has lora_{'AB'.replace(''.join(ab), '')} missing.")
        a, b = ab["A"], ab["B"]
        r = _pattern_value(config.get("rank_pattern"), module, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise ValueError(f"{source}: module {module!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                             f"but the config gives it rank {r} (r / rank_pattern).")
        out[module] = (a, b, alpha / (math.sqrt(r) if config.get("use_rslora") else r))
    if not out:
        raise ValueError(f"{source}: the adapter holds no LoRA weights.")
    return out
