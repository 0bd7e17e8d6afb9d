"""KV-cached batched decoding (greedy or sampling) for GPT-style models."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nemo_peft.models.config import check_keys


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None

    def __post_init__(self):  # messages name the Hydra key too (model.generation.*)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens} (model.generation.max_new_tokens).")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling (model.generation.temperature); use greedy=True "
                             "for argmax decoding.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p} (model.generation.top_p).")

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingParams":
        return cls(**check_keys(cls, d, "model.generation"))


def pick_token(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    if params.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop tokens once the mass before them already exceeds top_p (keeps at least one).
        drop = probs.cumsum(-1) - probs > params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def finished(done: bool, all_done: Callable[[bool], bool] | None) -> bool:
    return done if all_done is None else all_done(done)


@torch.no_grad()
def generate(model, context_ids: torch.Tensor, context_mask: torch.Tensor | None = None,
             params: SamplingParams | None = None, eos_id: int | None = None,
             all_done: Callable[[bool], bool] | None = None) -> list[list[int]]:
    """Continue each LEFT-padded row of ``context_ids``; returns the new tokens per row,
    cut after the first EOS (EOS itself not included). ``all_done(this process's rows are done)``,
    under a sharded model, says whether every process's are, so all stop at the same step."""
    params = params or SamplingParams()
    b, t = context_ids.shape
    device = context_ids.device
    if context_mask is None:
        context_mask = torch.ones_like(context_ids)
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    cache = model.new_kv_cache(b, t + params.max_new_tokens)
    mask = context_mask.long()
    padded = not bool(mask.all())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model(context_ids, attention_mask=mask if padded else None, position_ids=positions,
                   kv_cache=cache, return_hidden=True)
    logits = model.logits(hidden[:, -1])  # only the last position needs the LM head
    next_pos = positions[:, -1:] + 1
    out = torch.empty(b, params.max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    steps = 0
    for step in range(params.max_new_tokens):
        tok = pick_token(logits, params, gen)
        if eos_id is not None:
            tok = torch.where(done, torch.full_like(tok, eos_id), tok)
            done |= tok == eos_id
        out[:, step] = tok
        steps = step + 1
        if steps == params.max_new_tokens or eos_id is not None and finished(bool(done.all()), all_done):
            break
        if padded:
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
        hidden = model(tok[:, None], attention_mask=mask if padded else None, position_ids=next_pos,
                       kv_cache=cache, return_hidden=True)
        logits = model.logits(hidden[:, -1])
        next_pos = next_pos + 1
    return cut_at_eos(out[:, :steps], eos_id)


def cut_at_eos(tokens: torch.Tensor, eos_id: int | None) -> list[list[int]]:
    """Each row of generated ``tokens`` up to (not including) its first EOS."""
    rows = tokens.tolist()
    if eos_id is None:
        return rows
    return [row[:row.index(eos_id)] if eos_id in row else row for row in rows]
