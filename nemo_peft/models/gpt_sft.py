"""GPTSFTModel: answer-only SFT, evaluation and generation for a decoder-only ``GPTModel``."""
from __future__ import annotations

import torch

from nemo_peft.models.generation import generate
from nemo_peft.models.sft import SFTModule


class GPTSFTModel(SFTModule):
    """Batches from ``collate_sft``: ``input_ids``, ``labels``, ``loss_mask`` and the left-padded
    prompts ``context_ids`` / ``context_mask`` that generation continues; or, for training, packed
    rows from ``collate_packed`` with ``position_ids`` and ``segment_ids`` besides."""

    no_targets_hint = "check label_key and max_seq_length"

    def hidden_and_targets(self, batch):
        packed = {key: batch[key] for key in ("position_ids", "segment_ids") if key in batch}
        return self.model(batch["input_ids"], return_hidden=True, **packed), batch["loss_mask"] > 0

    def generate_ids(self, batch) -> list[list[int]]:
        return generate(self.model, batch["context_ids"], batch["context_mask"], **self.generation_kwargs())

    def prompt_ids(self, batch, i: int) -> torch.Tensor:
        return batch["context_ids"][i][batch["context_mask"][i].bool()]
