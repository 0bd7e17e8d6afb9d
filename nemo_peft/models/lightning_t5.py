"""T5SFTModel: the Lightning wrapper that fine-tunes, evaluates and generates with a ``T5Model``.

It mirrors ``GPTSFTModel``: the same optimizer/scheduler options (``OptimConfig``), the same
adapter-only checkpoints, validation loss plus exact match, generation in ``predict_step``.
Batches come from ``collate_seq2seq`` (teacher forcing on (context, label) pairs).
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from nemo_peft.data.seq2seq_dataset import IGNORE_INDEX
from nemo_peft.generation import SamplingParams
from nemo_peft.models.lightning import GPTSFTModel, OptimConfig
from nemo_peft.t5_generation import generate_seq2seq


class T5SFTModel(L.LightningModule):
    """Teacher-forced seq2seq fine-tuning of a ``T5Model``; validation loss and exact match; generation."""

    def __init__(self, model, tokenizer=None, optim: dict | None = None, generation: dict | None = None,
                 eval_exact_match: bool = True):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.optim = OptimConfig.from_dict(optim)
        self.sampling = SamplingParams(**dict(generation or {}))
        self.eval_exact_match = eval_exact_match
        self.strict_loading = False  # our checkpoints hold adapter weights only
        self._em = {"correct": 0, "total": 0}

    # ---- adapters: the wrapped model owns them ----
    def add_adapter(self, peft_cfgs, name: str = "default"):
        return self.model.add_adapter(peft_cfgs, name)

    def load_adapters(self, path, cfg=None, name=None):
        return self.model.load_adapters(path, cfg, name)

    def save_adapters(self, path, name=None):
        return self.model.save_adapters(path, name)

    def forward(self, input_ids, attention_mask=None, decoder_input_ids=None, **kw):
        return self.model(input_ids, attention_mask, decoder_input_ids, **kw)

    # ---- loss ----
    def loss(self, batch) -> torch.Tensor:
        """Mean cross-entropy over the real label tokens; the LM head runs only on those positions."""
        hidden = self.model(batch["input_ids"], batch.get("attention_mask"), batch["decoder_input_ids"],
                            return_hidden=True)
        keep = batch["labels"] != IGNORE_INDEX
        if not bool(keep.any()):
            raise ValueError("A batch has no label tokens to train on; check label_key and max_target_length.")
        logits = self.model.logits(hidden[keep])
        return F.cross_entropy(logits.float(), batch["labels"][keep])

    def on_train_start(self):
        self.train()  # loaders return models in eval mode; dropout must be live while training

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True)
        return loss

    # ---- evaluation ----
    def _eval_step(self, batch, prefix: str):
        n = batch["input_ids"].shape[0]
        self.log(f"{prefix}_loss", self.loss(batch), prog_bar=True, batch_size=n)
        if self.eval_exact_match:
            preds = self.generate_texts(batch)
            self._em["correct"] += sum(p.strip() == a.strip() for p, a in zip(preds, batch["answers"]))
            self._em["total"] += n

    def _eval_epoch_end(self, prefix: str):
        if self.eval_exact_match and self._em["total"]:
            self.log(f"{prefix}_exact_match", 100.0 * self._em["correct"] / self._em["total"], prog_bar=True)
        self._em = {"correct": 0, "total": 0}

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    # ---- generation ----
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

    # ---- optimization and adapter-only checkpoints: exactly GPTSFTModel's (they only use
    # self.optim, self.model's adapter API and the trainable parameters) ----
    configure_optimizers = GPTSFTModel.configure_optimizers
    on_save_checkpoint = GPTSFTModel.on_save_checkpoint
    on_load_checkpoint = GPTSFTModel.on_load_checkpoint
