"""A thin wrapper over a `tokenizers.Tokenizer` that knows the special ids and the model's chat template."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tokenizers import Tokenizer as _HFTokenizer

from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.core.fingerprint import vocab_hash

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # the file name transformers also writes and reads


@dataclass
class Tokenizer:
    """Text <-> ids. `backend` is a `tokenizers.Tokenizer`; special ids may be None.

    ``chat_template`` is the model's Jinja chat template (GGUF metadata, an HF directory's
    tokenizer_config.json / chat_template.jinja, or ours), None when the model has none;
    ``chat_template_source`` says where it came from, for error messages."""

    backend: _HFTokenizer
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    chat_template: str | None = None
    chat_template_source: str | None = field(default=None, compare=False)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def vocab_sha256(self) -> str:
        """A hash of the token -> id map: adapters record it to recognise their base's tokenizer."""
        return vocab_hash(self.backend.get_vocab(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without any special tokens added (BOS/EOS are the caller's choice)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids, each token's (start, end) character span in `text`); special-token text such as
        "<|im_start|>" in `text` becomes the special token, as in `encode`."""
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    # the special tokens' text, which chat templates print (e.g. {{ bos_token }})
    def token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.backend.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return self.token_text(self.bos_id)

    @property
    def eos_token(self) -> str | None:
        return self.token_text(self.eos_id)

    @property
    def pad_token(self) -> str | None:
        return self.token_text(self.pad_id)

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

    # --- files: tokenizer.json, a small sidecar with the special ids, chat_template.jinja if any ---
    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        special = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        with open(os.path.join(directory, "special_tokens.json"), "w") as f:
            json.dump(special, f, indent=2)
        template_path = os.path.join(directory, CHAT_TEMPLATE_FILE)
        if self.chat_template is not None:
            atomic_write(template_path, lambda tmp: _write_text(tmp, self.chat_template))
        elif os.path.isfile(template_path):  # a stale template would be read back as this tokenizer's
            os.remove(template_path)

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
        template, source = read_chat_template_file(directory)
        return cls(backend, special.get("bos_id"), special.get("eos_id"), special.get("pad_id"),
                   chat_template=template, chat_template_source=source)


def read_chat_template_file(directory: str) -> tuple[str | None, str | None]:
    """(template, its path) from ``directory/chat_template.jinja``, or (None, None)."""
    path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if not os.path.isfile(path):
        return None, None
    with open(path, encoding="utf-8", newline="") as f:  # newline="": the template's bytes, unchanged
        return f.read(), path


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
