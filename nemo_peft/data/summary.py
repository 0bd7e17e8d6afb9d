"""What a data split holds once tokenized: a summary for ``finetune.py``'s first line and the data
inspector (``examples/inspect_data.py``), so nothing is cut or left untrained silently.

Works on any dataset whose items have ``input_ids`` and ``loss_mask``; a dataset's ``stats`` (read,
dropped with reasons, truncated, needed lengths) are added when it keeps them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from nemo_peft.data.packing import first_fit_decreasing


def percentile(values: list[int], q: float) -> int:
    """The nearest-rank ``q``-th percentile (0 for no values)."""
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass
class DataSummary:
    split: str
    read: int
    lengths: list[int]  # tokens per kept example
    trained: list[int]  # trained tokens per kept example
    dropped: dict = field(default_factory=dict)  # reason -> count
    truncated: int = 0
    needed: list[int] = field(default_factory=list)  # tokens each example would need uncut (when known)
    max_seq_length: int | None = None
    end_trained: int = 0  # examples whose last trained token is the end-of-turn / EOS token
    micro_batch_size: int = 1

    @property
    def zero_trained(self) -> int:
        return sum(1 for n in self.trained if n == 0)

    def padding(self) -> tuple[float, float | None]:
        """(padding fraction of pad-to-longest micro-batches in file order, of packed rows)."""
        lengths, b = self.lengths, max(1, self.micro_batch_size)
        batches = [lengths[i:i + b] for i in range(0, len(lengths), b)]
        slots = sum(len(chunk) * max(chunk) for chunk in batches if chunk)
        unpacked = 1 - sum(lengths) / slots if slots else 0.0
        if not self.max_seq_length or not lengths or max(lengths) > self.max_seq_length:
            return unpacked, None
        rows = len(first_fit_decreasing(lengths, self.max_seq_length))
        return unpacked, 1 - sum(lengths) / (rows * self.max_seq_length)

    def suggested_max_seq_length(self) -> int:
        """A max_seq_length covering the 99th percentile of what examples need, rounded up to 16."""
        p99 = percentile(self.needed or self.lengths, 99)
        return max(16, -(-p99 // 16) * 16)

    def line(self) -> str:
        kept = len(self.lengths)
        dropped = sum(self.dropped.values())
        why = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items() if n)
        unpacked, packed = self.padding()
        parts = [f"{self.split}: {kept} of {self.read} examples kept"
                 + (f" ({dropped} dropped: {why})" if dropped else ""),
                 f"tokens p50/p95/max {percentile(self.lengths, 50)}/{percentile(self.lengths, 95)}/"
                 f"{max(self.lengths, default=0)}"]
        if self.truncated:
            need = max(self.needed, default=0)
            parts.append(f"{self.truncated} truncated (the longest needs {need} tokens; max_seq_length "
                         f"{self.max_seq_length}; {self.suggested_max_seq_length()} covers 99%)")
        else:
            parts.append("none truncated")
        parts.append(f"{self.zero_trained} with no trained token")
        parts.append(f"end-of-turn/EOS trained in {self.end_trained} of {kept}")
        parts.append(f"padding {100 * unpacked:.0f}% unpacked (micro batch {self.micro_batch_size})"
                     + (f" vs {100 * packed:.0f}% packed" if packed is not None else ""))
        return "; ".join(parts)


def end_ids(tokenizer, extra=()) -> set[int]:
    """The ids that end an answer: EOS and any extra stop ids (model.generation.stop_token_ids)."""
    return ({tokenizer.eos_id} if tokenizer.eos_id is not None else set()) | set(extra or ())


def summarize(dataset, split: str, end_ids: set[int], micro_batch_size: int = 1) -> DataSummary:
    """Tokenize every item of ``dataset`` once and summarize it; ``end_ids`` are the tokens that end
    a turn (EOS, the chat template's end-of-turn token)."""
    lengths, trained, end_trained = [], [], 0
    for i in range(len(dataset)):
        item = dataset[i]
        if "loss_mask" not in item:  # encoder-decoder items: the decoder's labels are what is trained
            labels = item["label_ids"]
            lengths.append(len(item["input_ids"]) + len(labels))
            trained.append(len(labels))
            end_trained += bool(labels) and labels[-1] in end_ids
            continue
        mask = item["loss_mask"]
        lengths.append(len(item["input_ids"]))
        trained.append(int(sum(mask)))
        last = max((t for t, m in enumerate(mask) if m), default=None)
        end_trained += last is not None and item["input_ids"][last] in end_ids
    stats = getattr(dataset, "stats", None) or {}
    return DataSummary(split=split, read=int(stats.get("read", len(dataset))), lengths=lengths, trained=trained,
                       dropped=dict(stats.get("dropped", {})), truncated=int(stats.get("truncated", 0)),
                       needed=list(stats.get("needed", [])),
                       max_seq_length=getattr(dataset, "max_seq_length", None), end_trained=end_trained,
                       micro_batch_size=micro_batch_size)
