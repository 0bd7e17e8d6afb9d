"""Sequence packing (data.train_ds.packed_sequence): the first-fit-decreasing packer, collate_packed, and
that a packed row trains each example exactly as it trains alone. The reference runs every example in
its own unpadded row through the same model, with a plain dense cross-entropy over the full logits, on
a GPT-2-style model (learned positions, LayerNorm, GELU, tied) and a Llama-style one (RoPE, RMSNorm,
SwiGLU, GQA), each with a randomised LoRA."""
import random

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from nemo_peft.data import SFTDataModule
from nemo_peft.data.packing import PackedDataset, collate_packed, first_fit_decreasing, padded_efficiency
from nemo_peft.data.seq2seq_dataset import Seq2SeqDataModule
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.modules.segment_mask import segment_attention_mask, segment_positions
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.peft.prefix import PrefixTuningPEFTConfig
from nemo_peft.peft.prompt_tuning import PromptTuningPEFTConfig
from tests.helpers import make_model, randomize_adapters

TOL = 1e-5
# (context, answer) lengths; packed into rows of CAPACITY they make rows of 1-3 examples plus padding
SHAPES = [(5, 3), (9, 6), (2, 1), (7, 7), (3, 2), (12, 4), (4, 4), (6, 1)]
CAPACITY = 24


def examples(shapes=SHAPES, vocab=97, seed=3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    items = []
    for context, answer in shapes:
        ids = torch.randint(1, vocab, (context + answer,), generator=g).tolist()
        items.append({"input_ids": ids, "loss_mask": [0] * context + [1] * answer, "context_ids": ids[:context]})
    return items


def lora_model(family, **overrides):
    model = make_model(family, **overrides)
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=2))
    return randomize_adapters(model, seed=1, std=0.1)  # B != 0: the adapter changes every projection


def packed_batch(items, capacity=CAPACITY):
    bins = first_fit_decreasing([len(i["input_ids"]) for i in items], capacity)
    return bins, collate_packed([[items[j] for j in b] for b in bins], pad_id=0)


def token_losses(logits, targets, mask):
    return F.cross_entropy(logits[mask], targets[mask], reduction="none")


# --- (a) per-token losses and gradients equal the unpacked ones ---------------------------------


def packed_and_alone(model, items, bins, batch):
    """(per-token losses of the packed batch, the same tokens' losses with each example alone in its own
    row, the adapter gradients of each summed loss): the packed tokens come row by row, example by example."""
    logits = model(batch["input_ids"], position_ids=batch["position_ids"], segment_ids=batch["segment_ids"])
    packed = token_losses(logits, batch["labels"], batch["loss_mask"].bool())
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    packed_grads = torch.autograd.grad(packed.sum(), [p for _, p in trained])
    alone = []
    for row in bins:
        for j in row:
            ids = torch.tensor(items[j]["input_ids"])
            answer = torch.tensor(items[j]["loss_mask"][1:], dtype=torch.bool)  # position t predicts t + 1
            alone.append(token_losses(model(ids[None])[0, :-1], ids[1:], answer))
    alone = torch.cat(alone)
    alone_grads = torch.autograd.grad(alone.sum(), [p for _, p in trained])
    names = [n for n, _ in trained]
    return packed, alone, dict(zip(names, packed_grads)), dict(zip(names, alone_grads))


@pytest.mark.parametrize("family,overrides", [("gpt2", {}), ("llama", {}), ("llama", {"sliding_window": 4})],
                         ids=["gpt2", "llama", "llama-sliding-window"])
def test_packed_losses_and_grads_equal_each_example_alone(family, overrides):
    items = examples()
    bins, batch = packed_batch(items)
    assert any(len(b) >= 3 for b in bins) and (batch["segment_ids"] == 0).any()  # several per row, and padding
    model = lora_model(family, **overrides)
    packed, alone, _, _ = packed_and_alone(model, items, bins, batch)
    torch.testing.assert_close(packed, alone, atol=TOL, rtol=0)
    # The summed loss's gradients reach ~30, where float32 sums in another order differ by up to ~4e-5
    # (relative ~6e-6): compare them in float64, where only the order of the sums differs.
    _, _, packed_grads, alone_grads = packed_and_alone(model.double(), items, bins, batch)
    assert packed_grads and all(g.abs().sum() > 0 for g in packed_grads.values())
    for n, g in packed_grads.items():
        torch.testing.assert_close(g, alone_grads[n], atol=TOL, rtol=0, msg=n)


def test_prefix_tuning_keys_are_seen_by_every_packed_example():
    model = make_model("llama")
    model.add_adapter(PrefixTuningPEFTConfig(num_virtual_tokens=3))
    randomize_adapters(model, std=0.5)
    items = examples()
    bins, batch = packed_batch(items)
    packed, alone, _, _ = packed_and_alone(model, items, bins, batch)
    torch.testing.assert_close(packed, alone, atol=TOL, rtol=0)


def test_segment_mask_is_block_diagonal_causal_with_padding_seeing_itself():
    seg = torch.tensor([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    mask = segment_attention_mask(seg)
    assert mask.shape == (2, 1, 8, 8)
    for b in range(2):
        for i in range(8):
            for j in range(8):
                expected = (seg[b, i] == seg[b, j] != 0 and j <= i) or i == j
                assert bool(mask[b, 0, i, j]) == expected, (b, i, j)
    # CPU SDPA gives 0 for a query that sees nothing, other kernels NaN: no row may be empty
    assert mask.any(-1).all()
    assert segment_positions(seg).tolist() == [[0, 1, 0, 1, 2, 0, 0, 1], list(range(8))]
    windowed = segment_attention_mask(seg, sliding_window=2)
    assert windowed[1, 0, 5].tolist() == [False] * 4 + [True, True, False, False]


def test_padding_stays_finite_and_positions_default_from_segments():
    model = lora_model("llama").train()
    _, batch = packed_batch(examples())
    hidden = model(batch["input_ids"], segment_ids=batch["segment_ids"], return_hidden=True)  # positions derived
    hidden.sum().backward()  # padding rows included: a NaN there would reach the gradients
    assert torch.isfinite(hidden).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    real = batch["segment_ids"] > 0
    assert torch.equal(segment_positions(batch["segment_ids"])[real], batch["position_ids"][real])
    given = model(batch["input_ids"], position_ids=batch["position_ids"], segment_ids=batch["segment_ids"],
                  return_hidden=True)
    torch.testing.assert_close(given[real], hidden[real], atol=0, rtol=0)


# --- (b) examples in one row cannot see each other ----------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_perturbing_one_example_leaves_the_others_bitwise_unchanged(family):
    items = examples([(3, 2), (4, 3), (2, 2), (5, 1)])
    row = collate_packed([items], pad_id=0)
    model = lora_model(family)
    with torch.no_grad():
        base = model(row["input_ids"], position_ids=row["position_ids"], segment_ids=row["segment_ids"])
        for segment in (1, 2, 4):
            ids = row["input_ids"].clone()
            inside = row["segment_ids"] == segment
            ids[inside] = (ids[inside] + 7) % 97
            out = model(ids, position_ids=row["position_ids"], segment_ids=row["segment_ids"])
            assert not torch.equal(out[inside], base[inside])
            assert torch.equal(out[~inside], base[~inside]), f"segment {segment} leaked into its neighbours"


# --- (c) the packer and collate_packed ----------------------------------------------------------


def naive_packing(lengths, capacity):
    """Consecutive (next-fit) packing in dataset order: a new row whenever the next example does not fit."""
    bins, room = [], 0
    for i, length in enumerate(lengths):
        if length > room:
            bins.append([])
            room = capacity
        bins[-1].append(i)
        room -= length
    return bins


def plain_first_fit_decreasing(lengths, capacity):
    """The textbook loop: longest first (ties by index), into the first row with room."""
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        b = next((k for k, r in enumerate(room) if r >= lengths[i]), len(bins))
        if b == len(bins):
            bins.append([])
            room.append(capacity)
        bins[b].append(i)
        room[b] -= lengths[i]
    return bins


@pytest.mark.parametrize("seed", range(5))
def test_first_fit_decreasing_packs_every_example_once_within_capacity(seed):
    rng = random.Random(seed)
    capacity = rng.choice([16, 64, 100])
    lengths = [rng.randint(1, capacity) if rng.random() < 0.2 else rng.randint(1, capacity // 3)
               for _ in range(rng.randint(1, 300))]
    bins = first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(b and sum(lengths[i] for i in b) <= capacity for b in bins)
    assert first_fit_decreasing(list(lengths), capacity) == bins  # deterministic
    assert len(bins) <= len(naive_packing(lengths, capacity))
    assert len(bins) >= -(-sum(lengths) // capacity)  # can't beat the volume bound
    assert bins == plain_first_fit_decreasing(lengths, capacity)


def test_first_fit_decreasing_small_cases_and_errors():
    assert first_fit_decreasing([3, 7, 5, 5, 2, 8], 10) == [[5, 4], [1, 0], [2, 3]]
    assert first_fit_decreasing([], 10) == []
    with pytest.raises(ValueError, match="Item 1 has 11 tokens.*rows of 10"):
        first_fit_decreasing([3, 11], 10)
    with pytest.raises(ValueError, match="Item 0 has 0 tokens"):
        first_fit_decreasing([0], 10)


def test_collate_packed_labels_stop_at_each_example():
    a = {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}
    b = {"input_ids": [8, 9], "loss_mask": [0, 1]}
    c = {"input_ids": [4, 3, 2, 1], "loss_mask": [0, 0, 1, 1]}
    out = collate_packed([[a, b], [c]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 3, 2, 1, 0]]
    assert out["labels"].tolist() == [[6, 7, 0, 9, 0], [3, 2, 1, 0, 0]]  # 7 does not predict 8
    assert out["loss_mask"].tolist() == [[1, 1, 0, 1, 0], [0, 1, 1, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert out["segment_ids"].tolist() == [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]
    with pytest.raises(ValueError, match="empty"):
        collate_packed([], pad_id=0)


def test_packed_dataset_efficiency_and_rows():
    class Items(list):
        max_seq_length = CAPACITY

    items = Items(examples())
    packed = PackedDataset(items)
    lengths = [len(i["input_ids"]) for i in items]
    assert packed.bins == first_fit_decreasing(lengths, CAPACITY)
    assert packed.efficiency == pytest.approx(sum(lengths) / (len(packed) * CAPACITY))
    assert [len(row) for row in packed] == [len(b) for b in packed.bins]
    assert padded_efficiency([2, 4, 3], [0, 1, 2], 2) == pytest.approx(9 / (2 * 4 + 3))
    line = packed.report(2, list(range(len(items))))
    assert line.startswith(f"packed {len(items)} examples into {len(packed)} rows of max_seq_length {CAPACITY}: "
                           f"packing efficiency {100 * packed.efficiency:.1f}%")


# --- (d) through the data module and one Lightning step -----------------------------------------

RECORDS = [{"input": f"Q{i}: " + "ab" * (i % 5), "output": "xyz"[: 1 + i % 3] + str(i)} for i in range(11)]


class GradCapture(GPTSFTModel):
    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=1.0)

    def on_before_optimizer_step(self, optimizer):
        super().on_before_optimizer_step(optimizer)
        self.grads = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.requires_grad}


def one_step(path, packed: bool) -> tuple[float, dict, L.Trainer]:
    tok = Tokenizer.byte_level()
    module = GradCapture(lora_model("llama", vocab_size=tok.vocab_size), tok, eval_exact_match=False)
    train = {"file_names": [path], "max_seq_length": 24, "micro_batch_size": 64, "packed_sequence": packed}
    data = SFTDataModule(tok, train_ds=train)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    return float(trainer.callback_metrics["train_loss"]), module.grads, data


def test_fit_step_with_packed_sequence_equals_unpacked(write_jsonl, capsys):
    path = write_jsonl(RECORDS)
    loss, grads, data = one_step(path, packed=True)
    packed = data._packed_train
    assert packed is not None and len(packed) < len(RECORDS)  # whole set: one batch of rows
    assert "packed 11 examples into" in capsys.readouterr().out
    unpacked_loss, unpacked_grads, _ = one_step(path, packed=False)
    assert abs(loss - unpacked_loss) <= TOL
    for n, g in grads.items():
        torch.testing.assert_close(g, unpacked_grads[n], atol=TOL, rtol=0, msg=n)


# --- errors -------------------------------------------------------------------------------------


def test_packing_is_refused_where_it_cannot_apply(write_jsonl):
    path = write_jsonl(RECORDS)
    tok = Tokenizer.byte_level()
    with pytest.raises(ValueError, match="validation_ds.packed_sequence=true: packing is for training only"):
        SFTDataModule(tok, train_ds={"file_names": [path]},
                      validation_ds={"file_names": [path], "packed_sequence": True})
    with pytest.raises(ValueError, match=r"decoder-only .*Set data\.train_ds\.packed_sequence=false"):
        Seq2SeqDataModule(tok, train_ds={"file_names": [path], "packed_sequence": True})
    model = make_model("llama")
    model.add_adapter(PromptTuningPEFTConfig(virtual_tokens=2))
    ids, seg = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 2]])
    with pytest.raises(ValueError, match="virtual-token adapters.*packed_sequence=false"):
        model(ids, segment_ids=seg)
    with pytest.raises(ValueError, match="not both"):
        make_model("llama")(ids, attention_mask=torch.ones_like(ids), segment_ids=seg)

