"""Sequence packing for decoder-only SFT (NeMo's ``data.train_ds.packed_sequence``): training examples
concatenated into rows of at most ``max_seq_length`` tokens, so a batch holds little padding.

The rows are made once, from the whole train set, by first-fit decreasing; the sampler shuffles rows,
not examples. ``collate_packed`` marks each row's examples with ``segment_ids`` and restarts
``position_ids`` per example; the model then keeps attention within each example (see
``modules/segment_mask.py``), so every token's loss is the one it has unpacked.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of indices into ``lengths``) with sums <= ``capacity``: the longest item first, each
    into the first bin it fits. Deterministic: equal lengths go in index order.

    A max-tree over the bins' free space finds the first bin that fits in O(log n), so a large train
    set packs in seconds; unopened bins count as free, so "no open bin fits" opens the next one.
    """
    for i, length in enumerate(lengths):
        if not 1 <= length <= capacity:
            raise ValueError(f"Item {i} has {length} tokens; packing into rows of {capacity} needs 1..{capacity}.")
    n = len(lengths)
    size = 1
    while size < n:
        size *= 2
    free = [0] * (2 * size)  # free[node]: the most room in any bin under node; leaves are bins
    free[size:size + n] = [capacity] * n
    for node in range(size - 1, 0, -1):
        free[node] = max(free[2 * node], free[2 * node + 1])
    bins: list[list[int]] = []
    for i in sorted(range(n), key=lambda j: (-lengths[j], j)):
        node = 1
        while node < size:  # go to the leftmost child with room
            node = 2 * node if free[2 * node] >= lengths[i] else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        free[node] -= lengths[i]
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def padded_efficiency(lengths: list[int], order: list[int], batch_size: int) -> float:
    """Real tokens / padded tokens when ``order`` is cut into consecutive batches of ``batch_size``
    examples, each padded to its longest (what unpacked training would compute on)."""
    padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        padded += len(batch) * max(batch)
    return sum(lengths[i] for i in order) / padded if padded else 0.0


class PackedDataset(Dataset):
    """The examples of ``dataset`` (SFTDataset items: ``input_ids``, ``loss_mask``, ...) packed into
    rows of ``max_seq_length`` (the dataset's own by default). Item i is row i: the list of its
    examples' items. Every example is tokenized once here to know its length."""

    def __init__(self, dataset, max_seq_length: int | None = None):
        self.dataset = dataset
        self.max_seq_length = int(max_seq_length or dataset.max_seq_length)
        self.lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
        self.bins = first_fit_decreasing(self.lengths, self.max_seq_length)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, i: int) -> list[dict]:
        return [self.dataset[j] for j in self.bins[i]]

    @property
    def efficiency(self) -> float:
        """Real tokens / (rows x max_seq_length)."""
        return sum(self.lengths) / (len(self.bins) * self.max_seq_length) if self.bins else 0.0

    def report(self, micro_batch_size: int, order: list[int]) -> str:
        """One line for the log; ``order`` is the unpacked examples' epoch order, batched by
        ``micro_batch_size`` for the comparison."""
        unpacked = padded_efficiency(self.lengths, order, micro_batch_size)
        return (f"packed {len(self.lengths)} examples into {len(self.bins)} rows of max_seq_length "
                f"{self.max_seq_length}: packing efficiency {100 * self.efficiency:.1f}% (unpacked padding would be "
                f"{100 * unpacked:.1f}% efficient)")


def collate_packed(rows: list[list[dict]], pad_id: int) -> dict:
    """Right-pad packed rows (lists of SFTDataset items) to the longest row of the batch.

    As ``collate_sft`` per example: ``labels[t]`` is the next token of the same example and
    ``loss_mask[t]`` is 1 when that token is an answer token; an example's last token predicts
    nothing (mask 0), never the next example's first. ``position_ids`` restart at 0 per example;
    ``segment_ids`` number a row's examples 1, 2, ... and are 0 on padding. Packed batches are for
    training only, so they carry no answer texts for evaluation.
    """
    if not rows or not all(rows):
        raise ValueError("collate_packed got an empty batch or an empty row; the packer produced no items.")
    size = len(rows)
    length = max(sum(len(item["input_ids"]) for item in row) for row in rows)
    input_ids = torch.full((size, length), pad_id, dtype=torch.long)
    labels = torch.full((size, length), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((size, length), dtype=torch.float32)
    position_ids = torch.zeros((size, length), dtype=torch.long)
    segment_ids = torch.zeros((size, length), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for segment, item in enumerate(row, start=1):
            ids = torch.tensor(item["input_ids"], dtype=torch.long)
            n = len(ids)
            input_ids[r, at:at + n] = ids
            labels[r, at:at + n - 1] = ids[1:]
            loss_mask[r, at:at + n - 1] = torch.tensor(item["loss_mask"][1:], dtype=torch.float32)
            position_ids[r, at:at + n] = torch.arange(n)
            segment_ids[r, at:at + n] = segment
            at += n
    return {"input_ids": input_ids, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids,
            "segment_ids": segment_ids}
