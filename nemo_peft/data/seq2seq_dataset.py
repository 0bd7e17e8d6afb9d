"""JSONL sequence-to-sequence data for encoder-decoder (T5) fine-tuning, NeMo-style.

Each line is one JSON object; ``context_key`` names the field the encoder reads and
``label_key`` the field the decoder learns to produce, e.g. {"input": "...", "output": "..."}.
``collate_seq2seq`` (data/collate.py) pads a batch: encoder ids and mask, decoder inputs (the start token
followed by the labels shifted right), labels with padding set to -100, answers, metadata.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

from nemo_peft.data.collate import collate_seq2seq
from nemo_peft.data.datamodule import SFTDataModule
from nemo_peft.data.sft_select import CHAT_KEYS
from nemo_peft.data.jsonl import (JsonlDataset, check_max_num_samples, check_special_token, check_text_fields,
                                  file_name_list, read_jsonl_records)
from nemo_peft.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

DATASET_KEYS = ("file_names", "context_key", "label_key", "max_seq_length", "max_target_length", "add_eos",
                "max_num_samples")


class Seq2SeqDataset(JsonlDataset):
    """(context, label) pairs tokenized for teacher-forced encoder-decoder training.

    Items are dicts: ``input_ids`` (the encoder's context tokens, + EOS), ``label_ids`` (the
    answer tokens, + EOS), ``answer`` (the stripped label text, for evaluation) and
    ``metadata`` (the record). Records are read and checked when the dataset is built, so bad
    data fails before training; tokenization happens per item.
    """

    def __init__(self, file_names: list[str] | str, tokenizer: Tokenizer, context_key: str = "input",
                 label_key: str = "output", max_seq_length: int = 512, max_target_length: int | None = None,
                 add_eos: bool = True, max_num_samples: int | None = None):
        self.file_names = file_name_list(file_names)
        max_target_length = max_seq_length if max_target_length is None else max_target_length
        for name, value in (("max_seq_length", max_seq_length), ("max_target_length", max_target_length)):
            if value < 1:
                raise ValueError(f"{name}={value} is too small: it must be at least 1.")
        check_max_num_samples(max_num_samples)
        check_special_token(tokenizer, "eos", add_eos)
        if context_key == label_key:
            raise ValueError(f"context_key and label_key are both {context_key!r}; the model would learn to copy "
                             "its input. Point them at different fields.")
        self.tokenizer = tokenizer
        self.context_key, self.label_key = context_key, label_key
        self.max_seq_length, self.max_target_length = max_seq_length, max_target_length
        self.add_eos = add_eos
        self.max_num_samples = max_num_samples
        self._warned = {"context": False, "label": False}
        self.records = read_jsonl_records(self.file_names, self._check_record, "Seq2seq", max_num_samples)

    # --- files ----------------------------------------------------------------------------
    def _check_record(self, record: dict, where: str) -> None:
        for key, role, option in ((self.context_key, "context", "context_key"),
                                  (self.label_key, "label", "label_key")):
            if key not in record:
                raise ValueError(f"{where}: record has no {role} field {key!r} (keys present: "
                                 f"{sorted(record)}). Set {option} to the field holding the {role}, or add the "
                                 "field to the data.")
        check_text_fields(record, where, {self.context_key: "context_key", self.label_key: "label_key"})

    # --- tokenization ---------------------------------------------------------------------
    def make_item(self, record: dict, input_ids: list[int], label_ids: list[int]) -> dict:
        return {"input_ids": input_ids, "label_ids": label_ids, "answer": str(record[self.label_key]).strip(),
                "metadata": dict(record)}

    def tokenize_record(self, record: dict) -> tuple[list[int], list[int]]:
        """(encoder ids, label ids), each cut from the right to its limit (the EOS is kept)."""
        eos = [self.tokenizer.eos_id] if self.add_eos else []
        context = self._cut(self.tokenizer.encode(str(record[self.context_key])), eos, self.max_seq_length,
                            "context", "max_seq_length")
        label = self._cut(self.tokenizer.encode(str(record[self.label_key])), eos, self.max_target_length,
                          "label", "max_target_length")
        return context, label

    def _cut(self, ids: list[int], eos: list[int], limit: int, role: str, option: str) -> list[int]:
        if len(ids) + len(eos) <= limit:
            return ids + eos
        if not self._warned[role]:  # once per dataset, not once per item
            logger.warning("A %s of %d tokens exceeds %s=%d; cutting from the right. Raise %s to keep it whole.",
                           role, len(ids) + len(eos), option, limit, option)
            self._warned[role] = True
        return (ids[:max(limit - len(eos), 0)] + eos)[:limit]


class Seq2SeqDataModule(SFTDataModule):
    """``SFTDataModule`` for Seq2SeqDatasets: the same per-split mappings (``train_ds`` ...) with
    Seq2SeqDataset arguments plus ``micro_batch_size``, ``shuffle``, ``num_workers``, ``seed``."""

    dataset_cls = Seq2SeqDataset
    dataset_keys = DATASET_KEYS

    def __init__(self, tokenizer: Tokenizer, decoder_start_id: int | None = None, train_ds: Mapping | None = None,
                 validation_ds: Mapping | None = None, test_ds: Mapping | None = None,
                 predict_ds: Mapping | None = None):
        super().__init__(tokenizer, train_ds, validation_ds, test_ds, predict_ds)
        self.decoder_start_id = self.pad_id if decoder_start_id is None else decoder_start_id

    def _check_config(self, split: str, cfg: Mapping | None) -> dict | None:
        chat = sorted(k for k in (cfg or {}) if k in CHAT_KEYS)
        if chat:
            raise ValueError(f"{split}_ds has {chat}: chat formats (messages, sharegpt, alpaca rendered with a chat "
                             "template) are read for GPT-style models only. T5 data is records with a context field "
                             "and a label field: set context_key and label_key instead.")
        # packed rows need a decoder-only model: an encoder-decoder would need packed encoder and decoder rows
        if cfg is not None and cfg.get("packed_sequence"):
            raise ValueError(f"{split}_ds.packed_sequence=true: sequence packing is for decoder-only (GPT-family) "
                             "models; T5-style encoder-decoder models train on unpacked examples. Set "
                             f"data.{split}_ds.packed_sequence=false.")
        return super()._check_config(split, cfg)

    def collate_fn(self):
        return functools.partial(collate_seq2seq, pad_id=self.pad_id, decoder_start_id=self.decoder_start_id)
