"""PEFT methods: one file each (config dataclass + adapter module). Importing this
package registers every method with ``PEFTConfig.from_dict``."""
from nemo_peft.peft import base, canonical, ia3, lora, prefix, prompt_tuning, ptuning  # noqa: F401
from nemo_peft.peft import dora, qlora  # noqa: F401  (qlora needs torchao only when used)
