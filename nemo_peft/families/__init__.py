"""Model families, each described once (``base.ModelFamily``), and the entry points that
dispatch on them: loading base models and adapters in any format, and exporting them."""
from nemo_peft.families import gpt, t5  # noqa: F401  (registers the built-in families)
from nemo_peft.families.base import FAMILIES, ModelFamily, family_named, family_of, register
from nemo_peft.families.io import (load_adapters, load_hf_peft, load_pretrained, save_hf, save_hf_peft,
                                   save_model)

__all__ = ["FAMILIES", "ModelFamily", "family_named", "family_of", "register", "load_adapters", "load_hf_peft",
           "load_pretrained", "save_hf", "save_hf_peft", "save_model"]
