"""Rebuild a byte-level BPE ``tokenizers.Tokenizer`` from a GGUF file's ``tokenizer.ggml.*`` metadata.

A GGUF carries no ``tokenizer.json``: it stores the vocabulary, the merges, a token type per
token and the name of llama.cpp's pre-tokenizer (``tokenizer.ggml.pre``). We rebuild the
tokenizer the way llama.cpp runs it (which is also how the original ``tokenizer.json`` of
these models splits text).
"""
from __future__ import annotations

import logging
from functools import lru_cache

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

from nemo_peft.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# llama.cpp's token types (llama_token_type): 3 = CONTROL (special), 4 = USER_DEFINED (added, not special).
CONTROL, USER_DEFINED = 3, 4
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"  # the default template; named ones (".tool_use") are not read

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp pre-tokenizer name -> how text is split before BPE.
#   "gpt2": the GPT-2 regex (ByteLevel's own).
#   "digits+gpt2": every digit alone (llama.cpp's "\p{N}" pass), then the GPT-2 regex --
#       SmolLM/StarCoder; the same as their tokenizer.json (Digits(individual) + ByteLevel).
#   anything else: a custom split regex, then byte-level without its regex.
_PRE_TOKENIZERS = {
    "default": "gpt2", "gpt2": "gpt2", "gpt-2": "gpt2", "olmo": "gpt2", "jais": "gpt2",
    "smollm": "digits+gpt2", "starcoder": "digits+gpt2", "refact": "digits+gpt2",
    "command-r": "digits+gpt2", "codeshell": "digits+gpt2", "exaone": "digits+gpt2",
    "minerva-7b": "digits+gpt2",
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT, "megrez": _QWEN2_SPLIT,
}


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable unicode character table (``bytes_to_unicode``)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _pre_tokenizer(pre: str | None):
    kind = _PRE_TOKENIZERS.get(pre or "default")
    if kind is None:
        log.warning("GGUF pre-tokenizer %r is not known here; splitting text with the GPT-2 regex, which may "
                    "tokenize some text differently from llama.cpp. Known: %s.", pre, sorted(_PRE_TOKENIZERS))
        kind = "gpt2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind in ("gpt2", "digits+gpt2"))
    if kind == "gpt2":
        return byte_level
    if kind == "digits+gpt2":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(kind), behavior="isolated"), byte_level])


def build_gguf_tokenizer(meta: dict, path: str | None = None) -> Tokenizer:
    """Our ``Tokenizer`` from GGUF metadata ``{key: value}`` (the ``tokenizer.ggml.*`` keys, and
    ``tokenizer.chat_template`` when the file embeds one); ``path`` names the file in errors."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"GGUF tokenizer type {kind!r} is not supported; only byte-level BPE ('gpt2', used by "
            "Llama-3, SmolLM, Qwen2, ...) is. Convert the model's tokenizer.json instead."
        )
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = meta.get("tokenizer.ggml.merges")
    if merges is None:
        raise ValueError("GGUF tokenizer has no 'tokenizer.ggml.merges'; cannot rebuild its BPE.")

    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    # Every regular token is already spelled in the byte alphabet; respell any that is not.
    vocab = {}
    for i, tok in enumerate(tokens):
        key = tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))
        vocab.setdefault(key, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]

    backend = _HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()

    # Control tokens (<|im_start|>, <|endoftext|>, ...) match whole and are special. A control token
    # spelled outside the byte alphabet is a llama.cpp mislabel; skip it like transformers does.
    special = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types) if ty == CONTROL and set(t) <= alphabet]
    if special:
        backend.add_special_tokens(special)
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in vocab]
    if user:
        backend.add_tokens(user)

    def special_id(name):
        v = meta.get(f"tokenizer.ggml.{name}_token_id")
        return int(v) if v is not None and 0 <= int(v) < len(tokens) else None

    template = meta.get(CHAT_TEMPLATE_KEY)
    source = f"GGUF metadata {CHAT_TEMPLATE_KEY!r}" + (f" of {path}" if path else "") if template else None
    return Tokenizer(backend, bos_id=special_id("bos"), eos_id=special_id("eos"), pad_id=special_id("padding"),
                     chat_template=template or None, chat_template_source=source)
