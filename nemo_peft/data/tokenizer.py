"""A thin wrapper over a `tokenizers.Tokenizer` that knows the special ids."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from tokenizers import Tokenizer as _HFTokenizer

from nemo_peft.core.fingerprint import vocab_hash


@dataclass
class Tokenizer:
    """Text <-> ids. `backend` is a `tokenizers.Tokenizer`; special ids may be None."""

    backend: _HFTokenizer
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def vocab_sha256(self) -> str:
        """A hash of the token -> id map: adapters record it to recognise their base's tokenizer."""
        return vocab_hash(self.backend.get_vocab(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without any special tokens added (BOS/EOS are the caller's choice)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @classmethod
    def byte_level(cls) -> "Tokenizer":
        """A file-free tokenizer: one token per byte plus <s>, </s>, <pad> (ids 256-258).

        Used by models built from scratch (tests, offline smoke runs)."""
        from tokenizers import decoders, models, pre_tokenizers

        alphabet = pre_tokenizers.ByteLevel.alphabet()
        vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
        backend = _HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(["<s>", "</s>", "<pad>"])
        return cls(backend, bos_id=256, eos_id=257, pad_id=258)

    # --- files: tokenizer.json plus a small sidecar with the special ids ---
    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        special = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        with open(os.path.join(directory, "special_tokens.json"), "w") as f:
            json.dump(special, f, indent=2)

    @classmethod
    def from_dir(cls, directory: str) -> "Tokenizer":
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No tokenizer.json in {directory!r}: a model directory needs one "
                "(save it with Tokenizer.save or copy it from the Hugging Face checkpoint)."
            )
        backend = _HFTokenizer.from_file(path)
        special_path = os.path.join(directory, "special_tokens.json")
        special = {}
        if os.path.isfile(special_path):
            with open(special_path) as f:
                special = json.load(f)
        return cls(backend, special.get("bos_id"), special.get("eos_id"), special.get("pad_id"))
