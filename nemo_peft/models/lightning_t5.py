"""T5SFTModel: GPTSFTModel's training, evaluation and checkpoint logic for a ``T5Model``.

Only what differs for an encoder-decoder is here: the teacher-forced loss on
(context, label) pairs from ``collate_seq2seq``, and seq2seq generation.
"""
from __future__ import annotations

import torch

from nemo_peft.data.seq2seq_dataset import IGNORE_INDEX
from nemo_peft.models.lightning import GPTSFTModel
from nemo_peft.t5_generation import generate_seq2seq


class T5SFTModel(GPTSFTModel):
    """Teacher-forced seq2seq fine-tuning of a ``T5Model``; validation loss and exact match; generation."""

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, **kw):
        return self.model(input_ids, attention_mask, decoder_input_ids, **kw)

    def loss(self, batch) -> torch.Tensor:
        """Mean cross-entropy over the real label tokens; the LM head runs only on those positions."""
        hidden = self.model(batch["input_ids"], batch.get("attention_mask"), batch["decoder_input_ids"],
                            return_hidden=True)
        keep = batch["labels"] != IGNORE_INDEX
        if not bool(keep.any()):
            raise ValueError("A batch has no label tokens to train on; check label_key and max_target_length.")
        return self.model.lm_loss(hidden[keep], batch["labels"][keep])

    @property
    def eos_id(self) -> int | None:
        tok_eos = self.tokenizer.eos_id if self.tokenizer is not None else None
        return tok_eos if tok_eos is not None else self.model.config.eos_token_id

    def generate_ids(self, batch) -> list[list[int]]:
        return generate_seq2seq(self.model, batch["input_ids"], batch.get("attention_mask"), self.sampling,
                                eos_id=self.eos_id, decoder_start_id=self.model.config.decoder_start_token_id)

    def generate_texts(self, batch) -> list[str]:
        if self.tokenizer is None:
            raise ValueError("Generation needs a tokenizer; build T5SFTModel with tokenizer=...")
        return [self.tokenizer.decode(r) for r in self.generate_ids(batch)]

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        preds = self.generate_texts(batch)
        mask = batch.get("attention_mask")
        out = []
        for i, pred in enumerate(preds):
            ids = batch["input_ids"][i] if mask is None else batch["input_ids"][i][mask[i].bool()]
            out.append({"input": self.tokenizer.decode(ids.tolist()), "prediction": pred.strip(),
                        "label": batch["answers"][i]})
        return out
