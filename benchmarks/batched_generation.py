"""Batched greedy generation as exact-match evaluation runs it: a batch of prompts of different
lengths, left-padded, a few new tokens, rows finishing at different steps (EOS).

Ours: ``nemo_peft.models.generation.generate(model, ids, mask, SamplingParams(greedy), eos_id)``.
HF:   ``model.generate(input_ids=ids, attention_mask=mask, do_sample=False, eos_token_id=eos)``.
Both get the same left-padded ids and mask. The EOS id is picked from a first, untimed run of
ours without EOS: a token that the rows first produce at as many different steps as possible, so
rows end at different steps. Both sides must then return identical tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prompts:
    ids: torch.Tensor  # [B, T] left-padded
    mask: torch.Tensor  # [B, T] 1 = real token
    lengths: list[int]


def make_prompts(n: int, lo: int, hi: int, vocab: int, pad_id: int = 0, seed: int = 2, device="cpu",
                 first_id: int = 100) -> Prompts:
    """``n`` seeded prompts of ``lo``..``hi`` random token ids in [first_id, vocab) (above the special
    tokens), left-padded with ``pad_id``."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    t = max(lengths)
    ids = torch.full((n, t), pad_id, dtype=torch.long)
    mask = torch.zeros((n, t), dtype=torch.long)
    for r, length in enumerate(lengths):
        ids[r, t - length:] = torch.randint(first_id, vocab, (length,), generator=g)
        mask[r, t - length:] = 1
    return Prompts(ids.to(device), mask.to(device), lengths)


def generate_ours(model, p: Prompts, new_tokens: int, eos_id: int | None) -> list[list[int]]:
    from nemo_peft.models.generation import SamplingParams, generate
    return generate(model, p.ids, p.mask, params=SamplingParams(max_new_tokens=new_tokens, greedy=True),
                    eos_id=eos_id)


def generate_hf(model, p: Prompts, new_tokens: int, eos_id: int | None, pad_id: int = 0) -> list[list[int]]:
    """HF's rows cut like ours: before the first EOS (not included)."""
    out = model.generate(input_ids=p.ids, attention_mask=p.mask, do_sample=False, max_new_tokens=new_tokens,
                         eos_token_id=eos_id, pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
    rows = out[:, p.ids.shape[1]:].tolist()
    return [r[:r.index(eos_id)] if eos_id is not None and eos_id in r else r for r in rows]


def pick_eos(rows: list[list[int]]) -> tuple[int, list[int | None]]:
    """(token, the step at which it first appears in each row or None): the token whose first
    appearances are spread over the most distinct steps (then: in the most rows; then: latest)."""
    first: dict[int, dict[int, int]] = {}
    for r, row in enumerate(rows):
        for step, tok in enumerate(row):
            first.setdefault(tok, {}).setdefault(r, step)

    def score(tok):
        steps = first[tok].values()
        return len(set(steps)), len(steps), sum(steps)
    tok = max(first, key=score)
    return tok, [first[tok].get(r) for r in range(len(rows))]


def generated_tokens(rows: list[list[int]], new_tokens: int) -> int:
    """Tokens each row generated: its kept tokens, plus the EOS that ended it (when one did)."""
    return sum(len(r) + (len(r) < new_tokens) for r in rows)


def mismatch_report(a: list[list[int]], b: list[list[int]]) -> str:
    bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    i = bad[0]
    return (f"{len(bad)} of {len(a)} rows differ; row {i}: nemo_peft {a[i]} vs HF {b[i]}")
