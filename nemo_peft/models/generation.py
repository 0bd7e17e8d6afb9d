"""KV-cached batched decoding (greedy or sampling) for GPT-style models."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from nemo_peft.models.config import check_keys
from nemo_peft.models.prefill import prefill
from nemo_peft.models.stopping import RowStops, stop_ids_of


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int | None = None
    repetition_penalty: float = 1.0  # 1.0 = off; > 1 discourages tokens already in the context or generated
    stop: list[str] = field(default_factory=list)  # a row ends once its text contains one (cut from the text)
    stop_token_ids: list[int] = field(default_factory=list)  # ids that end a row like EOS (e.g. end of turn)

    def __post_init__(self):  # messages name the Hydra key too (model.generation.*)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens} (model.generation.max_new_tokens).")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling (model.generation.temperature); use greedy=True "
                             "for argmax decoding.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p} (model.generation.top_p).")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty} "
                             "(model.generation.repetition_penalty); 1.0 turns it off.")
        # one value where a list belongs: a lone string would otherwise be read as its characters
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r} (model.generation.stop).")
        ids = self.stop_token_ids
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ValueError(f"stop_token_ids must be a list of token ids (ints >= 0), got {ids!r} "
                             "(model.generation.stop_token_ids).")
        self.stop_token_ids = ids

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingParams":
        return cls(**check_keys(cls, d, "model.generation"))

    def with_max_new_tokens(self, max_new_tokens: int | None) -> "SamplingParams":
        """A copy with another ``max_new_tokens`` (None: this one)."""
        return self if max_new_tokens is None else replace(self, max_new_tokens=max_new_tokens)


class RepetitionPenalty:
    """transformers' ``RepetitionPenaltyLogitsProcessor``: the logit of a token already seen by a row
    (in its context or generated) is divided by ``penalty`` when positive, multiplied when negative.
    Padding is not context, so a padded row is penalised as it would be alone."""

    def __init__(self, penalty: float, context_ids: torch.Tensor | None = None,
                 context_mask: torch.Tensor | None = None):
        self.penalty = penalty
        self.context, self.mask = context_ids, context_mask
        self.seen = None  # [B, V] bool, built at the first logits (they give V)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.penalty == 1.0:
            return logits
        if self.seen is None:
            counts = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
            if self.context is not None:  # a sum, not a scatter: a pad id may also be a real token of the row
                keep = torch.ones_like(self.context) if self.mask is None else self.mask.long()
                counts.scatter_add_(1, self.context, keep)
            self.seen = counts > 0
        penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
        return torch.where(self.seen, penalised, logits)

    def add(self, tok: torch.Tensor) -> None:
        if self.seen is not None:
            self.seen[torch.arange(tok.shape[0], device=tok.device), tok] = True


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


class Decoding:
    """One batch's decoding state, the same in the GPT and T5 loops: each step's logits go through the
    repetition penalty, a token is picked, finished rows are masked and stop conditions checked."""

    def __init__(self, params: SamplingParams, batch: int, device, eos_id: int | None = None,
                 decode: Callable[[list[int]], str] | None = None, context_ids: torch.Tensor | None = None,
                 context_mask: torch.Tensor | None = None):
        self.params = params
        self.gen = None if params.seed is None else torch.Generator(device=device).manual_seed(params.seed)
        self.penalty = RepetitionPenalty(params.repetition_penalty, context_ids, context_mask)
        self.stops = RowStops(batch, params.max_new_tokens, stop_ids_of(eos_id, params.stop_token_ids),
                              params.stop, decode, device)
        self.out = torch.empty(batch, params.max_new_tokens, dtype=torch.long, device=device)
        self.steps = 0

    def step(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row (a filler for finished rows)."""
        tok = self.stops.mask_finished(pick_token(self.penalty(logits), self.params, self.gen))
        self.out[:, self.steps] = tok
        self.stops.update(self.out, self.steps)
        self.penalty.add(tok)
        self.steps += 1
        return tok

    def over(self, all_done: Callable[[bool], bool] | None = None) -> bool:
        """Out of tokens, or every row finished (under a sharded model: every process's, see ``generate``)."""
        if self.steps == self.params.max_new_tokens:
            return True
        return self.stops.can_stop and finished(bool(self.stops.done.all()), all_done)

    def rows(self) -> list[list[int]]:
        return self.stops.rows(self.out[:, :self.steps])


# Generation runs the blocks eagerly even where model.compile=true compiled them: each layer's KV-cache
# index and the growing cache length are guards, so compiled blocks recompiled per layer and per length
# (dynamo's recompile limit, then eager anyway, after minutes of compiling); the eager decode paths are
# the tuned ones (modules/linear.py).
@torch.no_grad()
@torch.compiler.set_stance("force_eager")
def generate(model, context_ids: torch.Tensor, context_mask: torch.Tensor | None = None,
             params: SamplingParams | None = None, eos_id: int | None = None,
             all_done: Callable[[bool], bool] | None = None, decode: Callable[[list[int]], str] | None = None,
             max_new_tokens: int | None = None) -> list[list[int]]:
    """Continue each LEFT-padded row of ``context_ids``; returns the new tokens per row, cut before the
    first EOS or ``params.stop_token_ids`` id (not included) and after the token that completes a
    ``params.stop`` string (``decode``, the tokenizer's, turns a row's tokens into the text checked;
    ``stopping.cut_at_stop`` cuts the text). ``max_new_tokens`` overrides ``params.max_new_tokens``.
    ``all_done(this process's rows are done)``, under a sharded model, says whether every process's
    are, so all stop at the same step."""
    params = (params or SamplingParams()).with_max_new_tokens(max_new_tokens)
    b, t = context_ids.shape
    if context_mask is None:
        context_mask = torch.ones_like(context_ids)
    cache = model.new_kv_cache(b, t + params.max_new_tokens)
    mask = context_mask.long()
    padded = not bool(mask.all())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # Rows fixed for the whole batch: under a sharded model every process runs the same forwards and
    # steps; per-sample routing holds one adapter per row (route()). Otherwise the prompts are prefilled
    # in groups of similar length and a finished row leaves the model's batch.
    free_rows = all_done is None and not _routed(model)
    last = prefill(model, context_ids, mask, positions, cache, grouped=free_rows)
    logits = model.logits(last)  # only the last position needs the LM head
    next_pos = positions[:, -1:] + 1
    state = Decoding(params, b, context_ids.device, eos_id, decode, context_ids, mask)
    rows = torch.arange(b, device=context_ids.device)  # rows still decoded (indices into the batch)
    while True:
        tok = state.step(logits)
        if state.over(all_done):
            break
        if free_rows and bool(state.stops.done[rows].any()):
            keep = (~state.stops.done[rows]).nonzero().squeeze(1)
            cache.keep_rows(keep)
            rows, mask, next_pos = rows[keep], mask[keep], next_pos[keep]
            padded = not bool(mask.all())
        if padded:
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        hidden = model(tok[rows, None], attention_mask=mask if padded else None, position_ids=next_pos,
                       kv_cache=cache, return_hidden=True)
        logits = _scatter_rows(model.logits(hidden[:, -1]), rows, b)
        next_pos = next_pos + 1
    return state.rows()


def _routed(model) -> bool:
    slots = getattr(model, "adapter_slots_by_path", None)
    return slots is not None and any(slot.routing is not None for slot in slots().values())


def _scatter_rows(logits: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """Logits of the decoded ``rows`` placed in a [batch, V] tensor (finished rows get zeros: ignored)."""
    if logits.shape[0] == batch:
        return logits
    return logits.new_zeros(batch, logits.shape[-1]).index_copy_(0, rows, logits)
