"""Batching of dataset items into tensors: ``collate_sft`` (SFTDataset, causal LM) and
``collate_seq2seq`` (Seq2SeqDataset, encoder-decoder)."""
from __future__ import annotations

import torch

from nemo_peft.modules.chunked_loss import IGNORE_INDEX


def _round_up(n: int, multiple: int | None) -> int:
    if not multiple:
        return n
    return (n + multiple - 1) // multiple * multiple


def _text_fields(batch: list[dict]) -> dict:
    """What evaluation needs besides the tensors: each item's answer text and record, and which
    items are repeats that only pad a data-parallel process's share (``sampler.Padded``)."""
    return {"answers": [item["answer"] for item in batch], "metadata": [item["metadata"] for item in batch],
            "duplicate": torch.tensor([bool(item.get("duplicate", False)) for item in batch])}


def collate_sft(batch: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Pad a list of SFTDataset items to the longest in the batch.

    Training tensors are right-padded; `labels[t]` is the token at t+1 (next-token prediction) and
    `loss_mask[t]` is 1 exactly when that next token is an answer token. Contexts are LEFT-padded
    so that generation can append new tokens at the same position for every row.
    """
    if not batch:
        raise ValueError("collate_sft got an empty batch; the data loader produced no items.")
    size = len(batch)
    length = _round_up(max(len(item["input_ids"]) for item in batch), pad_to_multiple_of)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)
    labels = torch.full((size, length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((size, length), dtype=torch.float32)
    for row, item in enumerate(batch):
        ids = torch.tensor(item["input_ids"], dtype=torch.long)
        n = len(ids)
        input_ids[row, :n] = ids
        # the last real position has no next token: label stays pad, mask stays 0
        labels[row, : n - 1] = ids[1:]
        loss_mask[row, : n - 1] = torch.tensor(item["loss_mask"][1:], dtype=torch.float32)

    context_length = _round_up(max(len(item["context_ids"]) for item in batch), pad_to_multiple_of)
    context_ids = torch.full((size, context_length), pad_id, dtype=torch.long)
    context_mask = torch.zeros((size, context_length), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item["context_ids"])
        if n:
            context_ids[row, context_length - n:] = torch.tensor(item["context_ids"], dtype=torch.long)
            context_mask[row, context_length - n:] = 1

    return {
        "input_ids": input_ids,
        "labels": labels,
        "loss_mask": loss_mask,
        "context_ids": context_ids,
        "context_mask": context_mask,
        **_text_fields(batch),
    }


def collate_seq2seq(batch: list[dict], pad_id: int, decoder_start_id: int,
                    pad_to_multiple_of: int | None = None) -> dict:
    """Right-pad a list of Seq2SeqDataset items into tensors.

    ``decoder_input_ids[t]`` is the start token for t = 0 and ``labels[t-1]`` after, so the
    decoder predicts ``labels[t]`` at step t; padded label positions are IGNORE_INDEX (-100,
    skipped by the loss) and ``decoder_attention_mask`` is 1 on real decoder positions.
    """
    if not batch:
        raise ValueError("collate_seq2seq got an empty batch; the data loader produced no items.")

    def width(key):
        return _round_up(max(max(len(item[key]) for item in batch), 1), pad_to_multiple_of)

    size, s, t = len(batch), width("input_ids"), width("label_ids")
    input_ids = torch.full((size, s), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((size, s), dtype=torch.long)
    decoder_input_ids = torch.full((size, t), pad_id, dtype=torch.long)
    decoder_attention_mask = torch.zeros((size, t), dtype=torch.long)
    labels = torch.full((size, t), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(batch):
        ids, lab = item["input_ids"], item["label_ids"]
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
        if lab:
            labels[row, :len(lab)] = torch.tensor(lab, dtype=torch.long)
            decoder_input_ids[row, :len(lab)] = torch.tensor([decoder_start_id] + lab[:-1], dtype=torch.long)
            decoder_attention_mask[row, :len(lab)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": decoder_attention_mask,
        "labels": labels,
        **_text_fields(batch),
    }
