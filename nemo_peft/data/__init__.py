"""Data: tokenizer, JSONL SFT and chat datasets, batching, sampling and the Lightning data module."""
from nemo_peft.data.chat_dataset import ChatSFTDataset
from nemo_peft.data.collate import collate_seq2seq, collate_sft
from nemo_peft.data.datamodule import SFTDataModule
from nemo_peft.data.sampler import EpochShuffleSampler
from nemo_peft.data.sft_dataset import SFTDataset
from nemo_peft.data.tokenizer import Tokenizer

from nemo_peft.data.seq2seq_dataset import Seq2SeqDataModule, Seq2SeqDataset

__all__ = ["Tokenizer", "SFTDataset", "ChatSFTDataset", "collate_sft", "EpochShuffleSampler", "SFTDataModule", "Seq2SeqDataset",
           "collate_seq2seq", "Seq2SeqDataModule"]
