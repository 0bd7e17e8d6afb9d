"""A model family, described once: which classes, data, converters and generation it uses.

Recipes, loaders and exporters ask the family of a model (``family_of``) or of a name
(``family_named``) instead of asking "is this T5?". A new family (an encoder-only or an
MoE decoder) is one descriptor plus its modules: ``register(ModelFamily(...))`` in a module
of this package, imported by ``families/__init__.py``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModelFamily:
    name: str  # the ``model.arch`` value, e.g. "gpt"
    kind: str  # what users call it, for messages: "decoder-only (GPT)"
    model_cls: type  # the plain nn.Module (with AdapterMixin)
    config_cls: type  # its config dataclass (``from_dict`` / ``to_dict``)
    sft_module_cls: type  # the Lightning module that trains, evaluates and generates
    data_module_cls: type  # the Lightning data module; its ``dataset_keys`` are the data options
    data_preset: str  # the conf/data option to copy, for messages
    # config field -> tokenizer attribute, for a from-scratch config (vocab_size, eos and pad are common)
    scratch_ids: dict[str, str]
    # Hugging Face interop; a family without it leaves these empty and says so when asked
    hf_model_types: tuple[str, ...] = ()  # transformers ``model_type`` values this family reads and writes
    load_hf: Callable | None = None  # (directory, dtype) -> (model, tokenizer | None)
    save_hf: Callable | None = None  # (model, directory, tokenizer, model_type=None) -> None
    hf_peft: object | None = None  # convert.hf_peft_layout.HFPeftSpec: LoRA hosts -> HF module names
    load_gguf: Callable | None = None  # (path, dtype) -> (model, tokenizer), or None: no GGUF files
    data_module_args: Callable = lambda model: {}  # what the data module needs from the model

    def needs(self, what: str):
        """The interop piece ``what`` (e.g. "save_hf"), or a clear error when this family has none."""
        piece = getattr(self, what)
        if piece is None:
            raise ValueError(f"The {self.name} model family has no {what} (its descriptor in nemo_peft/families/ "
                             "does not provide one).")
        return piece

    @property
    def native_format(self) -> str:
        """``format`` in our own model directories."""
        return f"nemo_peft_{self.name}"


FAMILIES: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    if family.name in FAMILIES and FAMILIES[family.name] is not family:
        raise ValueError(f"Model family {family.name!r} is registered twice.")
    FAMILIES[family.name] = family
    return family


def family_named(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"model.arch={name!r} is not known; use one of {sorted(FAMILIES)} "
                         f"({', '.join(f'{n}: {f.kind}' for n, f in sorted(FAMILIES.items()))}).")
    return FAMILIES[name]


def unwrap(model):
    """The plain model of a Lightning module (which holds it as ``.model``), or the model itself."""
    return model.model if isinstance(getattr(model, "model", None), torch.nn.Module) else model


def family_of(model) -> ModelFamily:
    """The family whose model class built ``model`` (the Lightning wrapper is looked through)."""
    cls = type(unwrap(model))
    for family in FAMILIES.values():
        if cls is family.model_cls:
            return family
    raise TypeError(f"{cls.__name__} belongs to no registered model family ({sorted(FAMILIES)}); "
                    "describe it with a ModelFamily in nemo_peft/families/.")


def family_of_format(fmt: str) -> ModelFamily:
    for family in FAMILIES.values():
        if family.native_format == fmt:
            return family
    raise ValueError(f"Model format {fmt!r} is not known; nemo_peft model directories have one of "
                     f"{sorted(f.native_format for f in FAMILIES.values())}.")


def family_of_hf_type(model_type: str) -> ModelFamily | None:
    return next((f for f in FAMILIES.values() if model_type in f.hf_model_types), None)
