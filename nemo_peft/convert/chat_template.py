"""The tokenizer's chat template travels with the Hugging Face directories we write, as transformers
keeps it: ``chat_template.jinja`` beside the tokenizer, and also in ``tokenizer_config.json`` (which
older transformers versions read). Our native directories get the file from ``Tokenizer.save``."""
from __future__ import annotations

import os

from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.data.tokenizer import CHAT_TEMPLATE_FILE


def chat_template_of(tokenizer) -> str | None:
    """The tokenizer's Jinja chat template, or None."""
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) and template else None


def write_chat_template(directory: str, tokenizer) -> str | None:
    """Write ``chat_template.jinja`` (the template returned), or remove a stale one: transformers
    would apply an old directory's template to the new tokenizer."""
    path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    template = chat_template_of(tokenizer)
    if template is None:
        if os.path.isfile(path):
            os.remove(path)
        return None

    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="") as f:  # the template's bytes, unchanged
            f.write(template)
    atomic_write(path, write)
    return template
