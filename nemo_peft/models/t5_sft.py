"""T5SFTModel: teacher-forced seq2seq SFT, evaluation and generation for a ``T5Model``."""
from __future__ import annotations

import torch

from nemo_peft.models.seq2seq_generation import generate_seq2seq
from nemo_peft.models.sft import SFTModule
from nemo_peft.modules.chunked_loss import IGNORE_INDEX


class T5SFTModel(SFTModule):
    """Batches from ``collate_seq2seq``: encoder ``input_ids`` / ``attention_mask``, the shifted
    ``decoder_input_ids`` and the ``labels`` (IGNORE_INDEX on padding)."""

    no_targets_hint = "check label_key and max_target_length"

    def hidden_and_targets(self, batch):
        hidden = self.model(batch["input_ids"], batch.get("attention_mask"), batch["decoder_input_ids"],
                            return_hidden=True)
        return hidden, batch["labels"] != IGNORE_INDEX

    def generate_ids(self, batch) -> list[list[int]]:
        return generate_seq2seq(self.model, batch["input_ids"], batch.get("attention_mask"),
                                decoder_start_id=self.model.config.decoder_start_token_id, **self.generation_kwargs())

    def prompt_ids(self, batch, i: int) -> torch.Tensor:
        mask = batch.get("attention_mask")
        return batch["input_ids"][i] if mask is None else batch["input_ids"][i][mask[i].bool()]
