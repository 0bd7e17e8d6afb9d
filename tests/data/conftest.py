"""A tiny byte-level BPE tokenizer trained in memory, and a helper to write JSONL files."""
import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from nemo_peft.data.tokenizer import Tokenizer

SENTENCES = [
    "the input is a question about the weather",
    "the output is an answer about the sun and the rain",
    "Q: what is the capital of France? A: Paris",
    "a long long long input with many many words to truncate",
    "translate this sentence into another sentence please",
]


def build_tokenizer() -> Tokenizer:
    # byte-level, so whitespace is part of tokens (as in GPT-2/Llama BPE) and decode is exact
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(SENTENCES * 10, trainer=trainer)
    return Tokenizer(backend, bos_id=backend.token_to_id("<s>"), eos_id=backend.token_to_id("</s>"),
                     pad_id=backend.token_to_id("<pad>"))


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return build_tokenizer()


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(records, name=...) -> path; a str record is written verbatim as a line."""

    def write(records, name="data.jsonl"):
        path = tmp_path / name
        with open(path, "w") as f:
            for record in records:
                f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
        return str(path)

    return write
