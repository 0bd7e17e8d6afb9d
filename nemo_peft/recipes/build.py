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
from nemo_peft.data.seq2seq_dataset import Seq2SeqDataModule
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.models.lightning import GPTSFTModel
from nemo_peft.models.lightning_t5 import T5SFTModel
from nemo_peft.models.t5 import T5Config, T5Model
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


ARCHS = {"gpt": (GPTModel, GPTConfig), "t5": (T5Model, T5Config)}  # model.arch -> model and config classes


def _arch(model_cfg: DictConfig) -> str:
    arch = model_cfg.get("arch", "gpt")
    if arch not in ARCHS:
        raise ValueError(f"model.arch={arch!r} is not known; use one of {sorted(ARCHS)} "
                         "(gpt: decoder-only, t5: encoder-decoder).")
    return arch


def _scratch_model(arch: str, scratch: dict, tokenizer: Tokenizer):
    """A fresh random model of ``arch`` whose special ids are the byte-level tokenizer's."""
    ids = {"vocab_size": tokenizer.vocab_size, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    ids.update({"decoder_start_token_id": tokenizer.pad_id} if arch == "t5" else {"bos_token_id": tokenizer.bos_id})
    model_cls, config_cls = ARCHS[arch]
    try:
        return model_cls(config_cls.from_dict({**ids, **scratch}))
    except ValueError as e:  # name the options that belong to the other architecture
        other = "gpt" if arch == "t5" else "t5"
        other_cls = ARCHS[other][1]
        foreign = sorted(k for k in scratch
                         if k in other_cls.__dataclass_fields__ and k not in config_cls.__dataclass_fields__)
        hint = f" {foreign} are {other_cls.__name__} options: set model.arch={other}." if foreign else ""
        raise ValueError(f"model.from_scratch for arch={arch}: {e}{hint}") from None


def load_base(model_cfg: DictConfig):
    """(model, tokenizer) from ``restore_from_path``, or a fresh random model of ``arch`` from
    ``from_scratch`` (a GPTConfig or T5Config mapping) with the byte-level tokenizer."""
    arch = _arch(model_cfg)
    scratch = model_cfg.get("from_scratch")
    if scratch is None:
        model, tokenizer = load_pretrained(model_cfg.get("restore_from_path"))
        if not isinstance(model, ARCHS[arch][0]):
            found = next(a for a, (cls, _) in ARCHS.items() if isinstance(model, cls))
            raise ValueError(f"model.arch={arch} but {model_cfg.get('restore_from_path') or 'the default model'!r} "
                             f"holds a {type(model).__name__} ({found}); set model.arch={found}.")
        return model, tokenizer
    if model_cfg.get("restore_from_path"):
        raise ValueError("Set either model.restore_from_path or model.from_scratch, not both.")
    tokenizer = Tokenizer.byte_level()
    torch.manual_seed(int(model_cfg.get("init_seed", 0)))
    return _scratch_model(arch, to_dict(scratch), tokenizer), tokenizer


def build_model(model_cfg: DictConfig) -> GPTSFTModel:
    """GPTSFTModel for a GPT-style base, T5SFTModel for a T5-style one, with the PEFT section applied."""
    model, tokenizer = load_base(model_cfg)
    if tokenizer is None:
        raise ValueError(f"{model_cfg.get('restore_from_path')!r} has no tokenizer.json; the recipes need one.")
    module_cls = T5SFTModel if isinstance(model, T5Model) else GPTSFTModel
    module = module_cls(model, tokenizer, optim=to_dict(model_cfg.get("optim")),
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
            module.load_adapters(peft.restore_from_path)
    return module


def build_data(data_cfg: DictConfig, tokenizer, model=None) -> SFTDataModule:
    """SFTDataModule (prompt_template ...) for GPT-style models; Seq2SeqDataModule
    (context_key / label_key) when ``model`` is a T5Model."""
    splits = {k: to_dict(data_cfg[k]) if data_cfg.get(k) is not None else None
              for k in ("train_ds", "validation_ds", "test_ds", "predict_ds")}
    unknown = sorted(set(data_cfg) - set(splits))
    if unknown:
        raise ValueError(f"Unknown data section(s) {unknown}; valid: {sorted(splits)}.")
    if isinstance(model, T5Model):
        for split, cfg in splits.items():
            gpt_only = sorted(k for k in cfg or {} if k in SFT_ONLY_KEYS)
            if gpt_only:
                raise ValueError(f"data.{split} has {gpt_only}, options of decoder-only (GPT) data; a T5 model "
                                 "reads context_key (encoder input) and label_key (target) instead. Use "
                                 "data=date_reformat_t5 as a template.")
        return Seq2SeqDataModule(tokenizer, model.config.decoder_start_token_id, **splits)
    for split, cfg in splits.items():
        t5_only = sorted(k for k in cfg or {} if k in ("context_key", "max_target_length"))
        if t5_only:
            raise ValueError(f"data.{split} has {t5_only}, options of encoder-decoder (T5) data; a GPT-style model "
                             "reads prompt_template and label_key. Use data=date_reformat as a template.")
    return SFTDataModule(tokenizer, **splits)


# SFTDataset options that have no meaning for an encoder-decoder (no prompt concatenation, no BOS)
SFT_ONLY_KEYS = ("prompt_template", "truncation_field", "add_bos")


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
