"""Lightning data module for JSONL SFT data, configured NeMo-style with one mapping per split."""
from __future__ import annotations

import functools
from collections.abc import Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader

from nemo_peft.data.collate import collate_sft
from nemo_peft.data.packing import PackedDataset, collate_packed
from nemo_peft.data.sampler import EpochShuffleSampler, Padded, ResumableDataLoader
from nemo_peft.data.sft_dataset import SFTDataset
from nemo_peft.data.sft_select import CHAT_KEYS, make_sft_dataset
from nemo_peft.data.summary import end_ids, summarize
from nemo_peft.data.tokenizer import Tokenizer

DATASET_KEYS = ("file_names", "prompt_template", "label_key", "max_seq_length", "truncation_field",
                "add_bos", "add_eos", "max_num_samples", *CHAT_KEYS)  # chat formats: data/sft_select.py
LOADER_KEYS = ("micro_batch_size", "shuffle", "num_workers", "seed", "packed_sequence")
SPLITS = ("train", "validation", "test", "predict")
# which splits each Lightning stage needs; None (setup() with no stage) builds every configured one
_STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",),
                 "predict": ("predict",)}


class SFTDataModule(L.LightningDataModule):
    """Builds SFTDatasets and their loaders from `train_ds` / `validation_ds` / `test_ds` / `predict_ds`.

    Each is a mapping of SFTDataset arguments plus `micro_batch_size` (4), `shuffle` (True for
    train, else False), `num_workers` (0) and `seed` (1234); None means the split is not used.
    `packed_sequence` (train only, False) packs the train examples into rows of max_seq_length
    (data/packing.py); `micro_batch_size` then counts rows.
    `format` (auto), `chat_template`, `chat_template_file` and `train_on` (all_assistant) read chat
    and instruction data with the model's chat template (data/sft_select.py, data/chat_dataset.py).
    Keys are checked here, datasets are read lazily in `setup()`. Subclasses for other kinds of
    data set ``dataset_cls``/``dataset_keys`` and ``collate_fn``.
    """

    dataset_cls = SFTDataset
    dataset_keys = DATASET_KEYS

    def __init__(
        self,
        tokenizer: Tokenizer,
        train_ds: Mapping | None = None,
        validation_ds: Mapping | None = None,
        test_ds: Mapping | None = None,
        predict_ds: Mapping | None = None,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        given = {"train": train_ds, "validation": validation_ds, "test": test_ds, "predict": predict_ds}
        self.configs: dict[str, dict | None] = {split: self._check_config(split, cfg) for split, cfg in given.items()}
        self.datasets: dict[str, SFTDataset] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_position: dict | None = None  # restored from a checkpoint, for the next train loader
        self._packed_train: PackedDataset | None = None
        # a pad id only has to be a valid id: padded positions are masked out of the loss
        if tokenizer.pad_id is not None:
            self.pad_id = tokenizer.pad_id
        elif tokenizer.eos_id is not None:
            self.pad_id = tokenizer.eos_id
        else:
            self.pad_id = 0

    def _check_config(self, split: str, cfg: Mapping | None) -> dict | None:
        if cfg is None:
            return None
        cfg = dict(cfg)  # plain dict or omegaconf DictConfig
        valid = self.dataset_keys + LOADER_KEYS
        for key in cfg:
            if key not in valid:
                raise ValueError(f"Unknown key {key!r} in {split}_ds; valid keys are: {', '.join(valid)}.")
        if cfg.get("file_names") is None:
            raise ValueError(f"{split}_ds has no file_names: set it to the JSONL file(s) of the {split} split.")
        if isinstance(cfg["file_names"], str):
            cfg["file_names"] = [cfg["file_names"]]
        else:
            cfg["file_names"] = [str(f) for f in cfg["file_names"]]  # e.g. an omegaconf ListConfig
        cfg.setdefault("micro_batch_size", 4)
        cfg.setdefault("shuffle", split == "train")
        cfg.setdefault("num_workers", 0)
        cfg.setdefault("seed", 1234)
        if int(cfg["micro_batch_size"]) < 1:
            raise ValueError(f"{split}_ds.micro_batch_size must be >= 1, got {cfg['micro_batch_size']}.")
        if cfg.get("packed_sequence") and split != "train":
            raise ValueError(f"{split}_ds.packed_sequence=true: packing is for training only, evaluation and "
                             f"prediction read unpacked examples. Remove packed_sequence from {split}_ds.")
        return cfg

    def setup(self, stage: str | None = None) -> None:
        splits = _STAGE_SPLITS.get(stage, SPLITS) if stage is not None else SPLITS
        for split in splits:
            if self.configs[split] is not None:
                self._dataset(split)

    def _dataset(self, split: str):
        if split not in self.datasets:
            cfg = self.configs[split]
            if cfg is None:
                raise ValueError(f"No {split}_ds configured but {split} data was asked for: set "
                                 f"{split}_ds (at least file_names) in the data config.")
            kwargs = {k: v for k, v in cfg.items() if k in self.dataset_keys}
            self.datasets[split] = self.make_dataset(split, kwargs)
        return self.datasets[split]

    def make_dataset(self, split: str, kwargs: dict):
        if self.dataset_cls is SFTDataset:  # `format` picks prompt_template (SFTDataset) or a chat dataset
            return make_sft_dataset(self.tokenizer, kwargs, predict=split == "predict")
        return self.dataset_cls(tokenizer=self.tokenizer, **kwargs)

    def stop_token_ids(self, splits=("validation", "test")) -> list[int]:
        """Tokens generation on ``splits`` must stop at besides EOS: the chat template's end of turn."""
        ids = set()
        for split in splits:
            if self.configs[split] is not None:
                ids.update(getattr(self._dataset(split), "end_of_turn_ids", ()))
        return sorted(ids)

    def summarize(self, split: str, stop_ids=()):
        """What ``split`` holds once tokenized (``data/summary.py``)."""
        dataset = self._dataset(split)
        return summarize(dataset, split, end_ids(self.tokenizer, stop_ids), int(self.configs[split]["micro_batch_size"]))

    def data_parallel(self) -> tuple[int, int]:
        """(number of data-parallel processes, this one's rank) under the trainer's strategy."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        shard = getattr(strategy, "distributed_sampler_kwargs", None) or {}
        return int(shard.get("num_replicas", 1)), int(shard.get("rank", 0))

    def _loader(self, split: str) -> DataLoader:
        dataset = self._dataset(split)
        cfg = self.configs[split]
        seed = int(cfg["seed"])
        replicas, rank = self.data_parallel()
        pad = split != "train" and replicas > 1  # every sample evaluated once, every process as many batches
        collate = self.collate_fn()
        if cfg.get("packed_sequence"):  # the sampler then shuffles packed rows
            dataset, collate = self._packed_rows(), functools.partial(collate_packed, pad_id=self.pad_id)
        # Resumable: Lightning checkpoints the train loader's position (epoch + samples consumed).
        # A private generator for the workers' base seed: creating an iterator then draws nothing
        # from the global RNG, which dropout uses and checkpoints restore.
        return ResumableDataLoader(
            Padded(dataset) if pad else dataset,
            batch_size=int(cfg["micro_batch_size"]),
            sampler=EpochShuffleSampler(len(dataset), seed=seed, shuffle=bool(cfg["shuffle"]), replicas=replicas,
                                        rank=rank, pad=pad),
            collate_fn=collate,
            num_workers=int(cfg["num_workers"]),
            generator=torch.Generator().manual_seed(seed),
        )

    def collate_fn(self):
        return functools.partial(collate_sft, pad_id=self.pad_id)  # a partial pickles for workers

    def _packed_rows(self) -> PackedDataset:
        """The train split packed once (fixed rows; each epoch reshuffles them), reported on rank 0."""
        if self._packed_train is None:
            cfg, dataset = self.configs["train"], self._dataset("train")
            self._packed_train = PackedDataset(dataset)
            if self.trainer is None or self.trainer.global_rank == 0:
                order = EpochShuffleSampler(len(dataset), seed=int(cfg["seed"]), shuffle=bool(cfg["shuffle"])).order()
                print(self._packed_train.report(int(cfg["micro_batch_size"]), order))
        return self._packed_train

    def train_dataloader(self) -> DataLoader:
        self._train_loader = self._loader("train")
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
            self._train_position = None
        return self._train_loader

    # The train position is also in Lightning's fit-loop state, but Lightning applies that only
    # when it builds the train loader after restoring it; with max_epochs set, it builds it
    # earlier (estimated_stepping_batches). The data module's state is restored before either.
    def state_dict(self) -> dict:
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._train_position = state.get("train_position")
        if self._train_position is not None and self._train_loader is not None:  # built already: position it now
            self._train_loader.load_state_dict(self._train_position)
            self._train_position = None

    def val_dataloader(self):
        # Without validation data, fit should still run: Lightning calls this whenever the model
        # defines validation_step, and skips validation when the loader list is empty. Outside
        # fit (trainer.validate, direct calls) a missing split is an error like the others.
        trainer = self.trainer
        if self.configs["validation"] is None and trainer is not None and trainer.state.fn == "fit":
            return []
        return self._loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")
