"""PEFT methods: one file each (config dataclass + adapter module). Importing this
package registers every method with ``PEFTConfig.from_dict``."""
from nemo_peft.peft.base import PEFTConfig
from nemo_peft.peft.canonical import CanonicalAdaptersPEFTConfig
from nemo_peft.peft.dora import DoraPEFTConfig
from nemo_peft.peft.ia3 import IA3PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.peft.prefix import PrefixTuningPEFTConfig
from nemo_peft.peft.prompt_tuning import PromptTuningPEFTConfig
from nemo_peft.peft.ptuning import PtuningPEFTConfig
from nemo_peft.peft.qlora import QLoraPEFTConfig  # needs torchao only when used

__all__ = ["PEFTConfig", "CanonicalAdaptersPEFTConfig", "DoraPEFTConfig", "IA3PEFTConfig", "LoraPEFTConfig",
           "PrefixTuningPEFTConfig", "PromptTuningPEFTConfig", "PtuningPEFTConfig", "QLoraPEFTConfig"]
