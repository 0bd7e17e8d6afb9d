"""Build the model, data and trainer from a Hydra/omegaconf config (shared by the recipes)."""
from __future__ import annotations

import os
from importlib import resources

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from nemo_peft.convert.auto import load_pretrained
from nemo_peft.data.datamodule import SFTDataModule
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.models.lightning import GPTSFTModel
from nemo_peft.peft.schemes import configs_from_peft_section
from nemo_peft.recipes.checkpoint_io import SafeCheckpointIO


def bundled_path(rel: str) -> str:
    """Resolver ``${bundled:task/train.jsonl}``: a file shipped in nemo_peft/data/bundled."""
    return str(resources.files("nemo_peft.data").joinpath("bundled", rel))


def quote_comma_lists(argv: list[str], keys=("model.peft.peft_scheme",)) -> list[str]:
    """Let ``model.peft.peft_scheme=ptuning,adapter`` mean a comma list (NeMo's syntax);
    Hydra would otherwise read an unquoted comma as a multirun sweep."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in keys and "," in value and value[:1] not in "'\"[":
            arg = f"{key}='{value}'"
        out.append(arg)
    return out


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("bundled"):
        OmegaConf.register_new_resolver("bundled", bundled_path)


def to_dict(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def load_base(model_cfg: DictConfig):
    """(model, tokenizer) from ``restore_from_path``, or a fresh random model from
    ``from_scratch`` (a GPTConfig mapping) with the byte-level tokenizer."""
    scratch = model_cfg.get("from_scratch")
    if scratch is None:
        return load_pretrained(model_cfg.get("restore_from_path"))
    if model_cfg.get("restore_from_path"):
        raise ValueError("Set either model.restore_from_path or model.from_scratch, not both.")
    tokenizer = Tokenizer.byte_level()
    torch.manual_seed(int(model_cfg.get("init_seed", 0)))
    cfg = GPTConfig.from_dict({"vocab_size": tokenizer.vocab_size, "bos_token_id": tokenizer.bos_id,
                               "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
                               **to_dict(scratch)})
    return GPTModel(cfg), tokenizer


def build_model(model_cfg: DictConfig) -> GPTSFTModel:
    model, tokenizer = load_base(model_cfg)
    if tokenizer is None:
        raise ValueError(f"{model_cfg.get('restore_from_path')!r} has no tokenizer.json; the recipes need one.")
    module = GPTSFTModel(model, tokenizer, optim=to_dict(model_cfg.get("optim")),
                         generation=to_dict(model_cfg.get("generation")),
                         eval_exact_match=model_cfg.get("eval_exact_match", True))
    peft = model_cfg.get("peft")
    if peft is not None and peft.get("peft_scheme"):
        module.add_adapter(configs_from_peft_section(to_dict(peft), tokenizer))
        if peft.get("restore_from_path"):
            module.load_adapters(peft.restore_from_path)
    return module


def build_data(data_cfg: DictConfig, tokenizer) -> SFTDataModule:
    splits = {k: to_dict(data_cfg[k]) if data_cfg.get(k) is not None else None
              for k in ("train_ds", "validation_ds", "test_ds", "predict_ds")}
    unknown = sorted(set(data_cfg) - set(splits))
    if unknown:
        raise ValueError(f"Unknown data section(s) {unknown}; valid: {sorted(splits)}.")
    return SFTDataModule(tokenizer, **splits)


def build_trainer(trainer_cfg: DictConfig, output_dir: str, checkpoint_cfg: DictConfig | None = None) -> L.Trainer:
    kwargs = to_dict(trainer_cfg)
    callbacks = []
    if kwargs.get("enable_checkpointing", True) and checkpoint_cfg is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        callbacks.append(ModelCheckpoint(dirpath=os.path.join(output_dir, "checkpoints"), **to_dict(checkpoint_cfg)))
    elif checkpoint_cfg is None:
        kwargs["enable_checkpointing"] = False
    torch.set_num_threads(int(kwargs.pop("num_threads", 0)) or torch.get_num_threads())
    return L.Trainer(default_root_dir=output_dir, callbacks=callbacks, plugins=[SafeCheckpointIO()],
                     logger=kwargs.pop("logger", False), **kwargs)
