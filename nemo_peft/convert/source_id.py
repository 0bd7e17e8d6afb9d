"""The Hugging Face Hub id a checkpoint came from, for ``base_model_name_or_path`` in HF-PEFT exports
(peft and vLLM fetch the base by it). A GGUF file names it in its ``general.*`` metadata, more or
less directly; a directory in the Hub cache names it in its path."""
from __future__ import annotations

import os
import re

_HF_URL = re.compile(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([\w.-]+/[\w.-]+?)(?:\.git)?/?(?:[/?#].*)?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# llama.cpp's quantisation / precision suffixes of a file name: .Q4_1, -Q4_K_M, -IQ3_XS, .f16, -BF16, ...
_QUANT_SUFFIX = re.compile(r"[-._](?:I?Q\d\w*|BF16|F16|F32|FP16|FP32)$", re.IGNORECASE)
_HUB_CACHE = re.compile(r"(?:^|/)models--([\w.-]+?)--([\w.-]+)/snapshots/[^/]+/?$")


def _as_id(value) -> str | None:
    """``org/name`` from an id or a huggingface.co URL, else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    m = _HF_URL.match(value)
    if m:
        return m.group(1)
    return value if _HUB_ID.match(value) else None


def gguf_repo_id(meta: dict, path: str) -> str | None:
    """The Hub id of a GGUF file's model: its own source keys, then its single base model's, then
    ``general.organization`` + the file name without the quantisation suffix
    ("SmolLM2-135M-Instruct.Q4_1.gguf" of HuggingFaceTB -> "HuggingFaceTB/SmolLM2-135M-Instruct");
    None when nothing spells a valid id."""
    for key in ("general.source.huggingface.repository", "general.source.repo_url", "general.source.url",
                "general.repo_url", "general.url"):
        found = _as_id(meta.get(key))
        if found:
            return found
    if int(meta.get("general.base_model.count", 0) or 0) == 1:  # a merge of several has no single id
        for key in ("general.base_model.0.repo_url", "general.base_model.0.url"):
            found = _as_id(meta.get(key))
            if found:
                return found
    org = meta.get("general.organization")
    stem = _QUANT_SUFFIX.sub("", os.path.basename(str(path)).removesuffix(".gguf"))
    return _as_id(f"{org}/{stem}") if isinstance(org, str) and stem else None


def hub_cache_id(path: str) -> str | None:
    """``org/name`` of a snapshot directory in the Hub cache (``.../models--org--name/snapshots/<rev>``)."""
    m = _HUB_CACHE.search(os.path.abspath(str(path)).replace(os.sep, "/"))
    return f"{m.group(1)}/{m.group(2)}" if m else None
