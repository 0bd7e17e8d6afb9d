"""ThroughputMonitor counts exactly the tokens of the batches a real (1-process CPU) fit fed it, skips the
warmup steps, and rank 0 prints the per-rank table."""
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from nemo_peft.recipes.throughput import ThroughputMonitor

VOCAB = 31


def make_batches(n, with_loss_mask, seed=0):
    """``n`` dict batches, each of its own shape, so a window shifted by one batch counts differently."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n):
        shape = (1 + i % 3, 4 + 3 * i)
        ids = torch.randint(0, VOCAB, shape, generator=g)
        trained = torch.rand(shape, generator=g) < 0.4
        trained[0, 0] = True  # never an empty batch
        if with_loss_mask:
            batches.append({"input_ids": ids, "labels": ids.roll(-1, 1), "loss_mask": trained.float()})
        else:
            batches.append({"input_ids": ids, "labels": torch.where(trained, ids.roll(-1, 1), -100)})
    return batches


class TinyLM(L.LightningModule):
    """Embedding + linear head; training_step records what it was fed, counted in plain Python."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(VOCAB, 8), torch.nn.Linear(8, VOCAB)
        self.fed = []  # (optimizer step, tokens, trained tokens) per batch

    def training_step(self, batch, batch_idx):
        ids, labels = batch["input_ids"], batch["labels"]
        if "loss_mask" in batch:
            trained = sum(v == 1.0 for row in batch["loss_mask"].tolist() for v in row)
            labels = torch.where(batch["loss_mask"] > 0, labels, -100)
        else:
            trained = sum(v != -100 for row in labels.tolist() for v in row)
        self.fed.append((self.trainer.global_step, len(ids) * len(ids[0]), trained))
        logits = self.head(self.emb(ids))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, batches, monitor, max_steps, accumulate=1):
    module = TinyLM()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, accumulate_grad_batches=accumulate,
                        callbacks=[monitor], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, DataLoader(batches, batch_size=None, shuffle=False))
    return module


def rank_line(out, rank):
    return [line for line in out.splitlines() if re.match(rf"\[throughput\]\s+{rank}\s+\d", line)]


@pytest.mark.parametrize("with_loss_mask", [True, False])
def test_counts_the_fed_batches_after_warmup(tmp_path, capsys, with_loss_mask):
    monitor = ThroughputMonitor(warmup_steps=2)
    module = fit(tmp_path, make_batches(12, with_loss_mask), monitor, max_steps=5, accumulate=2)
    assert len(module.fed) == 10 and sorted({s for s, _, _ in module.fed}) == [0, 1, 2, 3, 4]
    timed = [(t, k) for s, t, k in module.fed if s >= 2]  # steps 0 and 1 (batches 0-3) are warmup
    assert len(timed) == 6
    [r] = monitor.per_rank
    assert r["rank"] == 0 and r["steps"] == 3
    assert r["tokens"] == sum(t for t, _ in timed)
    assert r["trained_tokens"] == sum(k for _, k in timed)
    assert r["tokens_per_s"] > 0 and r["trained_tokens_per_s"] > 0 and r["peak_mem_mib"] > 0
    # the rates are the counts over the same seconds
    assert r["tokens_per_s"] / r["trained_tokens_per_s"] == pytest.approx(r["tokens"] / r["trained_tokens"])
    assert monitor.total["tokens_per_s"] == pytest.approx(r["tokens_per_s"])

    out = capsys.readouterr().out
    lines = monitor.summary_lines()
    assert all(line in out for line in lines)
    [line] = rank_line(out, 0)
    assert line.split()[2:] == [f"{r['tokens_per_s']:.1f}", f"{r['trained_tokens_per_s']:.1f}",
                                f"{r['peak_mem_mib']:.1f}", "3"]
    assert re.search(r"^\[throughput\]\s+total\s+\d", out, re.M)
    assert "after 2 warmup steps" in lines[0]


def test_fewer_steps_than_warmup_times_them_all(tmp_path, capsys):
    monitor = ThroughputMonitor(warmup_steps=5)
    module = fit(tmp_path, make_batches(6, with_loss_mask=False), monitor, max_steps=3)
    [r] = monitor.per_rank
    assert r["steps"] == 3 and len(module.fed) == 3
    assert r["tokens"] == sum(t for _, t, _ in module.fed)
    assert r["trained_tokens"] == sum(k for _, _, k in module.fed)
    assert "no warmup skipped" in monitor.summary_lines()[0]
    assert len(rank_line(capsys.readouterr().out, 0)) == 1


def test_quiet_monitor_prints_nothing(tmp_path, capsys):
    monitor = ThroughputMonitor(warmup_steps=0, verbose=False)
    assert monitor.summary_lines() == []
    fit(tmp_path, make_batches(3, with_loss_mask=True), monitor, max_steps=2)
    assert "[throughput]" not in capsys.readouterr().out
    assert monitor.per_rank[0]["steps"] == 2 and len(monitor.summary_lines()) == 4
