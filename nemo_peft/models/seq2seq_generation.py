"""Batched seq2seq decoding (greedy or sampling) for ``T5Model``: the encoder runs once, the
decoder steps one token at a time over a KV cache (self-attention keys/values grow, the
cross-attention keys/values of the encoder output are computed at the first step)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from nemo_peft.models.generation import SamplingParams, cut_at_eos, finished, pick_token


@torch.no_grad()
def generate_seq2seq(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     params: SamplingParams | None = None, eos_id: int | None = None,
                     decoder_start_id: int | None = None, use_cache: bool = True,
                     all_done: Callable[[bool], bool] | None = None) -> list[list[int]]:
    """The generated tokens of each row of ``input_ids`` (padded on either side: T5's relative
    positions make the side irrelevant), cut before the first EOS (EOS itself not included).

    ``decoder_start_id`` defaults to ``model.config.decoder_start_token_id``. ``use_cache=False``
    re-runs the whole model on the growing decoder input every step (a slow reference).
    ``all_done`` keeps processes of a sharded model in step (see ``generation.generate``).
    """
    params = params or SamplingParams()
    if decoder_start_id is None:
        decoder_start_id = model.config.decoder_start_token_id
    b = input_ids.shape[0]
    device = input_ids.device
    mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.long()
    gen = None
    if params.seed is not None:
        gen = torch.Generator(device=device).manual_seed(params.seed)
    decoder_ids = torch.full((b, 1), decoder_start_id, dtype=torch.long, device=device)
    if use_cache:
        memory = model.encode(input_ids, mask)
        cache = model.new_kv_cache(b, params.max_new_tokens)
    out = torch.empty(b, params.max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    steps = 0
    for step in range(params.max_new_tokens):
        if use_cache:
            hidden = model(attention_mask=mask, decoder_input_ids=decoder_ids[:, -1:], encoder_outputs=memory,
                           kv_cache=cache, return_hidden=True)
        else:
            hidden = model(input_ids, mask, decoder_ids, return_hidden=True)
        tok = pick_token(model.logits(hidden[:, -1]), params, gen)  # only the last position needs the LM head
        if eos_id is not None:
            tok = torch.where(done, torch.full_like(tok, eos_id), tok)
            done |= tok == eos_id
        out[:, step] = tok
        steps = step + 1
        if eos_id is not None and finished(bool(done.all()), all_done):
            break
        decoder_ids = torch.cat([decoder_ids, tok[:, None]], dim=1)
    return cut_at_eos(out[:, :steps], eos_id)
