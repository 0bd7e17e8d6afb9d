"""The data summary (finetune's first line, the inspector) against counts made independently here."""
import json

import pytest

from nemo_peft.data import SFTDataset
from nemo_peft.data.packing import first_fit_decreasing
from nemo_peft.data.summary import DataSummary, percentile, summarize
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.recipes.inspect_data import marked


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_counts_truncation_lengths_and_trained_end_tokens(tmp_path):
    tok = Tokenizer.byte_level()
    rows = [{"input": "x" * n, "output": "abc"} for n in (3, 10, 40, 5, 60)]
    ds = SFTDataset(write(tmp_path / "d.jsonl", rows), tok, max_seq_length=32, add_eos=True)
    s = summarize(ds, "train", {tok.eos_id}, micro_batch_size=2)
    needed = [len(r["input"]) + 1 + len(r["output"]) + 1 for r in rows]  # byte tokens + " " + EOS
    assert s.needed == needed and s.truncated == sum(n > 32 for n in needed) == 2
    assert s.lengths == [min(n, 32) for n in needed]
    assert s.trained == [5] * 5 and s.zero_trained == 0  # " abc" (4 byte tokens) + EOS, never cut
    assert s.end_trained == 5
    unpacked, packed = s.padding()
    batches = [s.lengths[i:i + 2] for i in range(0, 5, 2)]
    slots = sum(len(b) * max(b) for b in batches)
    assert unpacked == pytest.approx(1 - sum(s.lengths) / slots)
    rows_used = len(first_fit_decreasing(s.lengths, 32))
    assert packed == pytest.approx(1 - sum(s.lengths) / (rows_used * 32))
    assert s.suggested_max_seq_length() == 80  # the 99th percentile needs 65 tokens: rounded up to 16
    line = s.line()
    assert "2 truncated (the longest needs 65 tokens; max_seq_length 32" in line


def test_percentile_and_suggestion():
    assert percentile([], 50) == 0
    assert percentile([5, 1, 3], 50) == 3 and percentile(list(range(1, 101)), 99) == 99
    s = DataSummary("train", read=3, lengths=[10, 20, 30], trained=[1, 0, 2], needed=[10, 20, 70])
    assert s.zero_trained == 1 and s.suggested_max_seq_length() == 80


def test_marked_wraps_exactly_the_trained_spans():
    tok = Tokenizer.byte_level()
    ids = tok.encode("ab") + tok.encode("cd") + [tok.eos_id] + tok.encode("e")
    mask = [0, 0, 1, 1, 1, 0]
    assert marked(tok, ids, mask, color=False) == "ab⟦cd</s>⟧e"
