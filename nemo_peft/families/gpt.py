"""The decoder-only family: GPT-2, Llama, SmolLM, Mistral, Qwen2 as one ``GPTModel``."""
from nemo_peft.convert.gguf import load_gguf
from nemo_peft.convert.hf_gpt import load_hf, save_hf
from nemo_peft.convert.hf_gpt_config import SUPPORTED
from nemo_peft.convert.hf_gpt_peft import GPT_PEFT_SPEC
from nemo_peft.data.datamodule import SFTDataModule
from nemo_peft.families.base import ModelFamily, register
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.models.gpt_sft import GPTSFTModel

GPT = register(ModelFamily(
    name="gpt", kind="decoder-only (GPT)", model_cls=GPTModel, config_cls=GPTConfig,
    sft_module_cls=GPTSFTModel, data_module_cls=SFTDataModule, data_preset="date_reformat",
    scratch_ids={"bos_token_id": "bos_id"},
    hf_model_types=SUPPORTED, load_hf=load_hf, save_hf=save_hf, hf_peft=GPT_PEFT_SPEC,
    load_gguf=load_gguf,  # llama.cpp files of the llama and qwen2 architectures
))
