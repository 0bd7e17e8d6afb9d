"""nemo_peft: parameter-efficient fine-tuning for GPT- and T5-style models, NeMo style.

The names most users need, from every layer: models and their configs, every PEFT config,
and the family-aware entry points for checkpoints in and out."""
from nemo_peft.core.mixin import AdapterMixin
from nemo_peft.families import (FAMILIES, ModelFamily, family_of, load_adapters, load_hf_peft, load_pretrained,
                                save_hf, save_hf_peft, save_model)
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.models.t5 import T5Config, T5Model
from nemo_peft.models.t5_sft import T5SFTModel
from nemo_peft.peft import *  # noqa: F401,F403  (every registered PEFT config class)
from nemo_peft.peft import __all__ as _peft_all

__all__ = ["AdapterMixin", "FAMILIES", "ModelFamily", "family_of", "load_adapters", "load_hf_peft", "load_pretrained",
           "save_hf", "save_hf_peft", "save_model", "GPTConfig", "GPTModel", "GPTSFTModel", "T5Config", "T5Model",
           "T5SFTModel", *_peft_all]
__version__ = "0.1.0"
