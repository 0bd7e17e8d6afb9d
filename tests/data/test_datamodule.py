"""collate_sft, EpochShuffleSampler and SFTDataModule."""
import lightning as L
import pytest
import torch

from nemo_peft.data import EpochShuffleSampler, SFTDataModule, SFTDataset, collate_sft

PAD = 0


def make_item(context, answer, text="a", meta=None):
    return {"input_ids": context + answer, "loss_mask": [0] * len(context) + [1] * len(answer),
            "context_ids": context, "answer": text, "metadata": meta or {"id": text}}


# --- collate -----------------------------------------------------------------------------------


def test_collate_right_pads_and_shifts_labels_and_mask():
    batch = [make_item([5, 6], [7, 8, 9], "x"), make_item([11, 12, 13], [14], "y")]
    out = collate_sft(batch, pad_id=PAD)
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9], [11, 12, 13, 14, PAD]]
    # labels[t] = input[t+1]; last real position and padding get pad
    assert out["labels"].tolist() == [[6, 7, 8, 9, PAD], [12, 13, 14, PAD, PAD]]
    # loss where the label is an answer token
    assert out["loss_mask"].tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 0, 0]]
    assert out["loss_mask"].dtype == torch.float32
    assert out["input_ids"].dtype == out["labels"].dtype == torch.long
    assert out["answers"] == ["x", "y"]
    assert out["metadata"] == [{"id": "x"}, {"id": "y"}]
    # the masked labels are exactly each item's answer tokens
    for row, item in enumerate(batch):
        picked = out["labels"][row][out["loss_mask"][row].bool()].tolist()
        assert picked == item["input_ids"][len(item["context_ids"]):]


def test_collate_left_pads_contexts():
    batch = [make_item([5, 6], [7]), make_item([11, 12, 13, 14], [15]), make_item([], [16])]
    out = collate_sft(batch, pad_id=PAD)
    assert out["context_ids"].tolist() == [[PAD, PAD, 5, 6], [11, 12, 13, 14], [PAD, PAD, PAD, PAD]]
    assert out["context_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert out["context_mask"].dtype == torch.long


def test_collate_pad_to_multiple_of():
    out = collate_sft([make_item([1, 2, 3], [4, 5])], pad_id=PAD, pad_to_multiple_of=4)
    assert out["input_ids"].shape == (1, 8) and out["labels"].shape == (1, 8) and out["loss_mask"].shape == (1, 8)
    assert out["context_ids"].tolist() == [[PAD, 1, 2, 3]]
    assert out["loss_mask"].sum().item() == 2


# --- sampler -----------------------------------------------------------------------------------


def test_sampler_is_deterministic_per_epoch_and_changes_across_epochs():
    a, b = EpochShuffleSampler(50, seed=7), EpochShuffleSampler(50, seed=7)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        order = list(a)
        assert order == list(b) == list(a)  # same (seed, epoch) -> same order, repeatable
        assert sorted(order) == list(range(50)) and len(a) == 50
        orders.append(order)
    assert orders[0] != orders[1] != orders[2]
    # a fresh sampler (a resumed run) set to epoch 2 reproduces epoch 2
    resumed = EpochShuffleSampler(50, seed=7)
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]
    assert list(EpochShuffleSampler(50, seed=8)) != orders[0]


def test_sampler_without_shuffle_is_sequential():
    sampler = EpochShuffleSampler(5, seed=1, shuffle=False)
    sampler.set_epoch(3)
    assert list(sampler) == [0, 1, 2, 3, 4]


# --- data module -------------------------------------------------------------------------------


@pytest.fixture
def train_file(write_jsonl):
    return write_jsonl([{"input": f"the input {i}", "output": f"the output {i}"} for i in range(6)], "train.jsonl")


def test_unknown_key_names_key_and_valid_keys(tokenizer, train_file):
    with pytest.raises(ValueError) as err:
        SFTDataModule(tokenizer, train_ds={"file_names": [train_file], "batch_size": 2})
    msg = str(err.value)
    assert "'batch_size'" in msg and "train_ds" in msg and "micro_batch_size" in msg and "file_names" in msg


def test_missing_split_is_a_clear_error(tokenizer, train_file):
    dm = SFTDataModule(tokenizer, train_ds={"file_names": train_file})
    with pytest.raises(ValueError, match="test_ds"):
        dm.test_dataloader()
    with pytest.raises(ValueError, match="validation_ds"):
        dm.val_dataloader()


def test_train_loader_batches_and_shuffles_per_epoch(tokenizer, train_file):
    OmegaConf = pytest.importorskip("omegaconf").OmegaConf

    cfg = OmegaConf.create({"file_names": [train_file], "micro_batch_size": 4, "seed": 3, "max_seq_length": 64})
    dm = SFTDataModule(tokenizer, train_ds=cfg, validation_ds={"file_names": train_file})
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "validation"}
    assert isinstance(dm.datasets["train"], SFTDataset)
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["input_ids"].shape[0] == 4 and len(batch["answers"]) == 4
    assert loader.sampler.shuffle and not dm.val_dataloader().sampler.shuffle
    assert dm.pad_id == tokenizer.pad_id
    loader.sampler.set_epoch(0)
    first = [a for b in loader for a in b["answers"]]
    loader.sampler.set_epoch(1)
    second = [a for b in loader for a in b["answers"]]
    assert sorted(first) == sorted(second) and first != second


class _TinyModel(L.LightningModule):
    def __init__(self, vocab_size):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 4)
        self.out = torch.nn.Linear(4, vocab_size)
        self.epoch_answers = []

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.epoch_answers.append([])
        self.epoch_answers[-1].extend(batch["answers"])
        logits = self.out(self.emb(batch["input_ids"]))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none")
        return (loss * batch["loss_mask"].flatten()).sum() / batch["loss_mask"].sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_without_validation_data_and_epochs_reshuffle(tokenizer, train_file, tmp_path):
    dm = SFTDataModule(tokenizer, train_ds={"file_names": train_file, "micro_batch_size": 2})
    model = _TinyModel(tokenizer.vocab_size)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    first, second = model.epoch_answers
    # Lightning called set_epoch: the sampler's order for each epoch is the one it trained on
    sampler = EpochShuffleSampler(6, seed=1234)
    for epoch, seen in enumerate((first, second)):
        sampler.set_epoch(epoch)
        assert seen == [f"the output {i}" for i in sampler]
    assert first != second
