"""Target-module names: Megatron, NeMo and Hugging Face names, wildcards and regexes.

Everything resolves to a host linear of a block (``linear_qkv`` ...) and, for fused
hosts, to the parts of its output (``q``/``k``/``v``, ``gate``/``up``). T5's cross-attention
has its own hosts, ``linear_q`` and the fused ``linear_kv`` [k | v].

A dotted target is a module path: ``decoder.layers.0.cross_attention.linear_kv`` (the whole
host) or ``encoder.layers.1.self_attention.linear_qkv.v`` (one part), with wildcards
(``*.linear_qkv.q``) or as a regular expression.
"""
from __future__ import annotations

import fnmatch
import re

MEGATRON_NAMES = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "linear_q", "linear_kv")
NEMO_NAMES = {
    "attention_qkv": ("linear_qkv",),
    "attention_dense": ("linear_proj",),
    "mlp_fc1": ("linear_fc1",),
    "mlp_fc2": ("linear_fc2",),
    "attention": ("linear_qkv", "linear_proj", "linear_q", "linear_kv"),
    "mlp": ("linear_fc1", "linear_fc2"),
    "all": MEGATRON_NAMES,
}
# HF name -> list of (host, part or None for the whole host).
HF_NAMES = {
    "q_proj": [("linear_qkv", "q")],
    "k_proj": [("linear_qkv", "k")],
    "v_proj": [("linear_qkv", "v")],
    "o_proj": [("linear_proj", None)],
    "gate_proj": [("linear_fc1", "gate")],
    "up_proj": [("linear_fc1", "up")],
    "down_proj": [("linear_fc2", None)],
    "c_attn": [("linear_qkv", None)],  # GPT-2's fused QKV
    "c_proj": [("linear_proj", None), ("linear_fc2", None)],  # GPT-2 uses it for both
    "c_fc": [("linear_fc1", None)],
    # T5 (self- and cross-attention share q/k/v/o; wi_0/wi_1 are the gated MLP's halves)
    "q": [("linear_qkv", "q"), ("linear_q", None)],
    "k": [("linear_qkv", "k"), ("linear_kv", "k")],
    "v": [("linear_qkv", "v"), ("linear_kv", "v")],
    "o": [("linear_proj", None)],
    "wi": [("linear_fc1", None)],
    "wi_0": [("linear_fc1", "gate")],
    "wi_1": [("linear_fc1", "up")],
    "wo": [("linear_fc2", None)],
}
_REGEX_CHARS = set("^$()[]+\\|{}")


def is_pattern(target: str) -> bool:
    return "*" in target or "?" in target or bool(_REGEX_CHARS & set(target))


def pattern_matches(target: str, path: str) -> bool:
    """A shell-style wildcard or a regular expression (full match on the module path).

    '*.layers.0.*.linear_qkv' reads as a wildcard, 'decoder\\.layers\\.[01]\\..*' as a regex;
    a pattern valid as both matches if either reading does."""
    if not _REGEX_CHARS & set(target) and fnmatch.fnmatchcase(path, target):
        return True
    try:
        return re.fullmatch(target, path) is not None
    except re.error as e:
        if _REGEX_CHARS & set(target):
            raise ValueError(f"Target {target!r} is not a valid regular expression: {e}.") from None
        return False


def select_parts(target: str, host: str, host_path: str, parts: dict) -> set[str] | None:
    """Which parts of ``host`` the target selects: None (no match) or a set of part
    names ({"all"} means the whole host, i.e. one fused adapter)."""
    if target == host or host in NEMO_NAMES.get(target, ()):
        return {"all"}
    if target in HF_NAMES:
        chosen = set()
        for h, part in HF_NAMES[target]:
            if h != host:
                continue
            if part is None or list(parts) == ["all"] and part == "up":
                chosen.add("all")  # e.g. up_proj on a non-gated MLP is its whole fc1
            elif part in parts:
                chosen.add(part)
        return chosen or None
    if is_pattern(target) or "." in target:  # a module path: the whole host, or some of its parts
        if pattern_matches(target, host_path):
            return {"all"}
        chosen = {p for p in parts if p != "all" and pattern_matches(target, f"{host_path}.{p}")}
        return chosen or None
    return None


def known_names_message(example_path: str) -> str:
    return (
        f"Valid names: Megatron {list(MEGATRON_NAMES)}, NeMo {list(NEMO_NAMES)}, "
        f"Hugging Face {list(HF_NAMES)}; or a wildcard such as '*.layers.0.*.linear_qkv' "
        f"or a regular expression, matched against module paths such as {example_path!r} "
        "(add .q/.k/.v or .gate/.up to a fused module's path for one part)."
    )
