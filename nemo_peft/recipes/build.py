"""Build the model, data and trainer from a Hydra/omegaconf config (shared by the recipes)."""
from __future__ import annotations

import difflib
import inspect
import os

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf

from nemo_peft.data.position import AlignBatchCount
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.families import FAMILIES, family_named, family_of, load_adapters, load_pretrained
from nemo_peft.families.base import unwrap
from nemo_peft.families.io import remember_tokenizer
from nemo_peft.models.compile import compile_blocks
from nemo_peft.peft.schemes import configs_from_peft_section
from nemo_peft.recipes.checkpoint_io import SafeCheckpointIO
from nemo_peft.recipes.loggers import trainer_logger
from nemo_peft.recipes.progress import step_progress_bar
from nemo_peft.recipes.run_log import quiet_third_party
from nemo_peft.recipes.strategies import build_strategy, check_devices, devices_per_node


def to_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


# the keys each section reads: one added with Hydra's "+" that is not here is a typo, not a no-op
MODEL_KEYS = ("arch", "restore_from_path", "from_scratch", "init_seed", "eval_exact_match", "global_batch_size",
              "activations_checkpoint_granularity", "optim", "generation", "peft", "compile")


def check_section_keys(node, allowed, where: str) -> None:
    """Every key of config section ``node`` is in ``allowed``; else a clear error naming ``where`` and the
    close matches. (Dataclass-backed options use ``models.config.check_keys``, which lists their fields.)"""
    unknown = sorted(set(node or {}) - set(allowed))
    if unknown:
        hints = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {hints[k][0]!r}?)" if hints[k] else "") for k in unknown)
        raise ValueError(f"Unknown key(s) {said} in {where}; valid keys: {', '.join(sorted(allowed))}.")


def _scratch_model(family, scratch: dict, tokenizer: Tokenizer):
    """A fresh random model of ``family`` whose special ids are the byte-level tokenizer's."""
    try:
        ids = {"vocab_size": tokenizer.vocab_size, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
        ids.update({field: getattr(tokenizer, attr) for field, attr in family.scratch_ids.items()})
        return family.model_cls(family.config_cls.from_dict({**ids, **scratch}))
    except ValueError as e:  # name the options that belong to another family
        own = family.config_cls.__dataclass_fields__
        hints = []
        for other in FAMILIES.values():
            foreign = sorted(k for k in scratch if k in other.config_cls.__dataclass_fields__ and k not in own)
            if other is not family and foreign:
                hints.append(f" {foreign} are {other.config_cls.__name__} options: set model.arch={other.name}.")
        raise ValueError(f"model.from_scratch for arch={family.name}: {e}{''.join(hints)}") from None


def load_base(model_cfg: DictConfig):
    """(model, tokenizer) from ``restore_from_path``, or a fresh random model of family ``arch`` from
    ``from_scratch`` (its config class's fields) with the byte-level tokenizer."""
    check_section_keys(model_cfg, MODEL_KEYS, "model")
    family = family_named(model_cfg.get("arch", "gpt"))
    scratch = model_cfg.get("from_scratch")
    if scratch is None:
        model, tokenizer = load_pretrained(model_cfg.get("restore_from_path"))
        found = family_of(model)
        if found is not family:
            source = model_cfg.get("restore_from_path") or "the default model"
            raise ValueError(f"model.arch={family.name} but {source!r} holds a {type(model).__name__} "
                             f"({found.name}); set model.arch={found.name}.")
        return model, tokenizer
    if model_cfg.get("restore_from_path"):
        raise ValueError("Set either model.restore_from_path or model.from_scratch, not both.")
    tokenizer = Tokenizer.byte_level()
    torch.manual_seed(int(model_cfg.get("init_seed", 0)))
    model = _scratch_model(family, to_dict(scratch), tokenizer)
    remember_tokenizer(model, tokenizer)
    return model, tokenizer


def build_model(model_cfg: DictConfig):
    """The family's SFT Lightning module around the base model, with the PEFT section applied."""
    model, tokenizer = load_base(model_cfg)
    if tokenizer is None:
        raise ValueError(f"{model_cfg.get('restore_from_path')!r} has no tokenizer.json; the recipes need one.")
    module = family_of(model).sft_module_cls(model, tokenizer, optim=to_dict(model_cfg.get("optim")),
                                             generation=to_dict(model_cfg.get("generation")),
                                             eval_exact_match=model_cfg.get("eval_exact_match", True))
    granularity = model_cfg.get("activations_checkpoint_granularity")
    if granularity not in (None, "full"):
        raise ValueError(f"model.activations_checkpoint_granularity={granularity!r}; use null (keep activations) "
                         "or 'full' (recompute every layer in backward).")
    model.set_activation_checkpointing(granularity == "full")
    peft = model_cfg.get("peft")
    if peft is not None and peft.get("peft_scheme"):
        module.add_adapter(configs_from_peft_section(to_dict(peft), tokenizer))
        if peft.get("restore_from_path"):
            load_adapters(module, peft.restore_from_path, strict_base=peft.get("strict_base", True))
    if model_cfg.get("compile", False):  # last: compiled code specialises on the adapters in place
        compile_blocks(model)
    return module


def build_data(data_cfg: DictConfig, tokenizer, model):
    """The data module of ``model``'s family (prompt_template data for GPT-style models, context /
    label data for T5-style ones); an option of another family's data is a clear error."""
    splits = {k: to_dict(data_cfg[k]) if data_cfg.get(k) is not None else None
              for k in ("train_ds", "validation_ds", "test_ds", "predict_ds")}
    unknown = sorted(set(data_cfg) - set(splits))
    if unknown:
        raise ValueError(f"Unknown data section(s) {unknown}; valid: {sorted(splits)}.")
    family = family_of(model)
    own = set(family.data_module_cls.dataset_keys)
    for split, cfg in splits.items():
        for other in FAMILIES.values():
            foreign = sorted(k for k in cfg or {} if k in other.data_module_cls.dataset_keys and k not in own)
            if foreign:
                raise ValueError(f"data.{split} has {foreign}, options of {other.kind} data; this {family.kind} model "
                                 f"reads {', '.join(family.data_module_cls.dataset_keys)} instead. Use "
                                 f"data={family.data_preset} as a template.")
    return family.data_module_cls(tokenizer, **family.data_module_args(unwrap(model)), **splits)


def build_trainer(trainer_cfg: DictConfig, output_dir: str, checkpoint_cfg: DictConfig | None = None,
                  callbacks: list | None = None, loggers: list | None = None) -> L.Trainer:
    """A lightning.Trainer from the trainer section; ``loggers`` (exp_manager's, see loggers.py) are used unless
    ``trainer.logger=false``."""
    kwargs = to_dict(trainer_cfg)
    check_section_keys(kwargs, [*inspect.signature(L.Trainer).parameters, "num_threads"],
               "trainer (lightning.Trainer's arguments, plus num_threads)")
    check_devices(kwargs)
    callbacks = [*(callbacks or []), AlignBatchCount()]
    if kwargs.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks += step_progress_bar()
    if kwargs.get("enable_checkpointing", True) and checkpoint_cfg is not None:
        checkpoint = to_dict(checkpoint_cfg)
        check_section_keys(checkpoint, [k for k in inspect.signature(ModelCheckpoint).parameters if k != "dirpath"],
                   "exp_manager.checkpoint (ModelCheckpoint's arguments)")
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(output_dir, "checkpoints"), **checkpoint))
    elif checkpoint_cfg is None:
        kwargs["enable_checkpointing"] = False
    threads = int(kwargs.pop("num_threads", 0))
    if not threads and kwargs.get("accelerator", "cpu") == "cpu":  # CPU processes of one node share its cores
        threads = max(1, torch.get_num_threads() // devices_per_node(kwargs))
    torch.set_num_threads(threads or torch.get_num_threads())
    kwargs["strategy"] = build_strategy(kwargs)
    # the data module splits batches over data-parallel processes itself (data/sampler.py), resumably
    kwargs.setdefault("use_distributed_sampler", False)
    quiet_third_party()
    return L.Trainer(default_root_dir=output_dir, callbacks=callbacks, plugins=[SafeCheckpointIO()],
                     logger=trainer_logger(kwargs.pop("logger", None), loggers), **kwargs)
