"""nemo_peft: parameter-efficient fine-tuning for GPT- and T5-style models, NeMo style.

The names most users need, from every layer: models and their configs, every PEFT config, the
Lightning pieces (SFT modules, data modules, strategies, callbacks), the loaders and the recipes.

They are imported on first use (PEP 562 ``__getattr__``): ``import nemo_peft`` loads neither torch
nor Lightning, so the ``nemo-peft`` command answers ``--help`` at once, and ``from nemo_peft import
LoraPEFTConfig`` pays only for what it needs.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    # the slot mechanism
    "AdapterMixin": "nemo_peft.core.mixin",
    # models, their configs and their Lightning modules
    "GPTConfig": "nemo_peft.models.gpt", "GPTModel": "nemo_peft.models.gpt",
    "T5Config": "nemo_peft.models.t5", "T5Model": "nemo_peft.models.t5",
    "SFTModule": "nemo_peft.models.sft", "GPTSFTModel": "nemo_peft.models.gpt_sft", "T5SFTModel": "nemo_peft.models.t5_sft",
    "OptimConfig": "nemo_peft.models.optim", "SamplingParams": "nemo_peft.models.generation",
    "generate": "nemo_peft.models.generation", "generate_seq2seq": "nemo_peft.models.seq2seq_generation",
    # PEFT configs (every registered one; see _peft_names)
    "PEFTConfig": "nemo_peft.peft", "LoraPEFTConfig": "nemo_peft.peft", "DoraPEFTConfig": "nemo_peft.peft",
    "QLoraPEFTConfig": "nemo_peft.peft", "IA3PEFTConfig": "nemo_peft.peft", "PtuningPEFTConfig": "nemo_peft.peft",
    "CanonicalAdaptersPEFTConfig": "nemo_peft.peft", "BottleneckAdapterPEFTConfig": "nemo_peft.peft",
    "PromptTuningPEFTConfig": "nemo_peft.peft", "PrefixTuningPEFTConfig": "nemo_peft.peft",
    # data
    "Tokenizer": "nemo_peft.data", "SFTDataset": "nemo_peft.data", "ChatSFTDataset": "nemo_peft.data",
    "Seq2SeqDataset": "nemo_peft.data", "SFTDataModule": "nemo_peft.data", "Seq2SeqDataModule": "nemo_peft.data",
    "collate_sft": "nemo_peft.data", "collate_seq2seq": "nemo_peft.data",
    # file formats
    "load_gguf": "nemo_peft.convert.gguf", "load_hf": "nemo_peft.convert.hf_gpt", "load_hf_t5": "nemo_peft.convert.hf_t5",
    # model families and the family-aware entry points
    "FAMILIES": "nemo_peft.families", "ModelFamily": "nemo_peft.families", "family_of": "nemo_peft.families",
    "family_named": "nemo_peft.families", "load_pretrained": "nemo_peft.families", "load_adapters": "nemo_peft.families",
    "save_model": "nemo_peft.families", "save_hf": "nemo_peft.families", "save_hf_peft": "nemo_peft.families",
    "load_hf_peft": "nemo_peft.families",
    # recipes and their Lightning pieces
    "AdapterDDPStrategy": "nemo_peft.recipes.strategies", "AdapterFSDPStrategy": "nemo_peft.recipes.strategies",
    "ThroughputMonitor": "nemo_peft.recipes.throughput", "bundled_path": "nemo_peft.recipes.hydra_args",
    "run_finetune": "nemo_peft.recipes.finetune", "run_generate": "nemo_peft.recipes.generate",
    "run_inspect": "nemo_peft.recipes.inspect_data", "merge_to_checkpoint": "nemo_peft.recipes.merge",
    "estimate_finetune": "nemo_peft.recipes.estimate",
    "quiet_third_party": "nemo_peft.recipes.run_log",  # for a plain lightning.Trainer: drops known noise
}


def _peft_names() -> list[str]:
    """Every config class ``nemo_peft.peft`` exports (a new method file is picked up without an edit here)."""
    return list(importlib.import_module("nemo_peft.peft").__all__)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None and name == "__all__":
        return sorted(set(_EXPORTS) | set(_peft_names()))
    if module is None and not name.startswith("_") and name[:1].isupper() and name.endswith("PEFTConfig"):
        module = "nemo_peft.peft" if name in _peft_names() else None
    if module is None:
        raise AttributeError(f"module 'nemo_peft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
