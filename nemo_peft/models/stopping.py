"""When a generated row ends, shared by the GPT and T5 decoding loops: at EOS or another stop
token id (``SamplingParams.stop_token_ids``, e.g. a chat template's end-of-turn token), or once its
decoded continuation contains a stop string (``SamplingParams.stop``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch


class RowStops:
    """Which rows of a batch are finished, and where each row's tokens end.

    A row ended by a stop id ends before that token (the id itself is not returned); a row ended by a
    stop string keeps the token that completed it, and ``cut_at_stop`` cuts the decoded text."""

    def __init__(self, batch: int, max_new_tokens: int, stop_ids: Sequence[int], stop: Sequence[str],
                 decode: Callable[[list[int]], str] | None, device):
        if stop and decode is None:
            raise ValueError(f"Stop strings {list(stop)} need the tokenizer's decode (pass decode=...).")
        self.ids = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device) if stop_ids else None
        # finished rows keep stepping (the batch moves together) on a filler their output never keeps
        self.fill = int(stop_ids[0]) if stop_ids else 0
        self.stop, self.decode = list(stop), decode
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.ends = [max_new_tokens] * batch

    @property
    def can_stop(self) -> bool:
        return self.ids is not None or bool(self.stop)

    def mask_finished(self, tok: torch.Tensor) -> torch.Tensor:
        return torch.where(self.done, torch.full_like(tok, self.fill), tok)

    def update(self, out: torch.Tensor, step: int) -> None:
        """Mark the rows that ``out[:, step]`` (the token just written) finishes."""
        if self.ids is not None:
            hit = torch.isin(out[:, step], self.ids) & ~self.done
            for i in hit.nonzero().flatten().tolist():
                self.ends[i] = step
            self.done |= hit
        if self.stop:
            for i in (~self.done).nonzero().flatten().tolist():
                text = self.decode(out[i, :step + 1].tolist())
                if any(s in text for s in self.stop):
                    self.ends[i] = step + 1
                    self.done[i] = True

    def rows(self, out: torch.Tensor) -> list[list[int]]:
        return [row[:end] for row, end in zip(out.tolist(), self.ends)]


def stop_ids_of(eos_id: int | None, extra: Sequence[int]) -> list[int]:
    """EOS first (the filler of finished rows), then the other stop ids, each once."""
    return list(dict.fromkeys(([eos_id] if eos_id is not None else []) + [int(i) for i in extra]))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` before the earliest stop string it contains (the stop string and what follows are cut)."""
    cuts = [text.find(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text


def with_model_stops(params, tokenizer, eos_ids: Sequence[int] = ()):
    """``params`` whose ``stop_token_ids`` also hold ``eos_ids`` (a checkpoint's other EOS ids, as
    transformers' generate stops on each) and the id of every stop string that is one special token:
    decoding skips special tokens, so such a string (e.g. "<|im_end|>") would never show in the text."""
    ids = list(params.stop_token_ids) + [int(i) for i in eos_ids]
    backend = getattr(tokenizer, "backend", None)
    for s in params.stop if backend is not None else ():
        tid = backend.token_to_id(s)
        if tid is not None and tokenizer.decode([tid]) == "":
            ids.append(tid)
    ids = list(dict.fromkeys(ids))
    return params if ids == list(params.stop_token_ids) else replace(params, stop_token_ids=ids)
