"""How one model family's LoRA hosts map onto Hugging Face module names, for HF-PEFT adapter
files. Each family's converter builds one ``HFPeftSpec``; ``hf_peft.py`` only reads it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# our host linear path -> [(HF module path, first row in our host, rows)]
Layout = dict[str, list[tuple[str, int, int]]]


@dataclass(frozen=True)
class HFPeftSpec:
    task_type: str  # peft's task_type: "CAUSAL_LM", "SEQ_2_SEQ_LM"
    model_types: tuple[str, ...]  # the transformers model types whose module names we can write
    default_model_type: Callable[[object], str]  # model -> the model type to name modules for
    # (model, model_type) -> Layout; model_type None (import): every naming the model may have been saved under
    layout: Callable[[object, str | None], Layout]
    # Targets written into a LoraPEFTConfig on import: None = exact module paths (plus ".part");
    # else {host: {part: HF short name}} and the hosts' layers go into layer_selection
    part_targets: dict[str, dict[str, str]] | None = None
    conv1d_model_types: tuple[str, ...] = ()  # HF stores these layers' weights [in, out] (peft's fan_in_fan_out)
