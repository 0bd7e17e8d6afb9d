"""PEFT methods: one file each (config dataclass + adapter module). Importing this
package registers every method with ``PEFTConfig.from_dict``."""
from nemo_peft.peft import canonical, ia3, lora  # noqa: F401
