"""Which dataset reads a GPT-style split: ``SFTDataset`` for prompt_template records,
``ChatSFTDataset`` for the chat formats (messages, sharegpt, alpaca).

``format: auto`` (the default) looks at the first record of the first file: a "messages",
"conversations" or "instruction" key means that chat format, anything else prompt_template. A
split that sets its own prompt_template (not the default) is prompt_template data whatever its keys.
"""
from __future__ import annotations

import inspect
import logging

from nemo_peft.data.chat_dataset import ChatSFTDataset
from nemo_peft.data.formats import check_format, detect_format
from nemo_peft.data.record_files import first_record
from nemo_peft.data.sft_dataset import SFTDataset

logger = logging.getLogger(__name__)

CHAT_KEYS = ("format", "chat_template", "chat_template_file", "train_on")
PROMPT_TEMPLATE_KEYS = ("prompt_template", "label_key", "truncation_field", "add_bos", "add_eos")
_SFT_DEFAULTS = {name: p.default for name, p in inspect.signature(SFTDataset.__init__).parameters.items()
                 if p.default is not inspect.Parameter.empty}


def resolve_format(cfg: dict) -> str:
    """The split's format, ``auto`` decided from the data (see the module docstring)."""
    fmt = check_format(cfg.get("format") or "auto")
    if fmt != "auto":
        return fmt
    if cfg.get("prompt_template", _SFT_DEFAULTS["prompt_template"]) != _SFT_DEFAULTS["prompt_template"]:
        return "prompt_template"
    record, _ = first_record(cfg["file_names"][0], "SFT")
    return detect_format(record) or "prompt_template"


def make_sft_dataset(tokenizer, cfg: dict, predict: bool = False):
    """The dataset for one split's options ``cfg`` (the data module's dataset keys)."""
    cfg = {k: v for k, v in cfg.items() if v is not None}
    fmt = resolve_format(cfg)
    if fmt == "prompt_template":
        chat_only = sorted(k for k in CHAT_KEYS[1:] if k in cfg)
        if chat_only:
            raise ValueError(f"{chat_only} apply to chat data (format messages, sharegpt or alpaca), but "
                             f"{cfg['file_names']} is prompt_template data (format={cfg.get('format', 'auto')}); "
                             "drop those keys or set format to the records' chat format.")
        return SFTDataset(tokenizer=tokenizer, predict=predict, **_arguments(SFTDataset, cfg))
    ignored = sorted(k for k in PROMPT_TEMPLATE_KEYS if k in cfg and cfg[k] != _SFT_DEFAULTS[k])
    if ignored:  # the chat template decides BOS/EOS and the prompt; presets' default values pass quietly
        logger.warning("%s are prompt_template options; this split is %s data rendered with the chat template, so "
                       "they are ignored.", ignored, fmt)
    return ChatSFTDataset(tokenizer=tokenizer, predict=predict, **_arguments(ChatSFTDataset, cfg))


def _arguments(cls, cfg: dict) -> dict:
    """The options ``cls`` takes (the data module also holds the other class's, and its own)."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "tokenizer", "predict"}
    return {k: v for k, v in cfg.items() if k in names}
