"""nemo_peft: parameter-efficient fine-tuning for GPT-style models, NeMo style."""
from nemo_peft.core.mixin import AdapterMixin
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.peft.base import PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig

__all__ = ["AdapterMixin", "GPTConfig", "GPTModel", "PEFTConfig", "LoraPEFTConfig"]
__version__ = "0.1.0"
