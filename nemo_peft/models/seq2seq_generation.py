"""Batched seq2seq decoding (greedy or sampling) for ``T5Model``: the encoder runs once, the
decoder steps one token at a time over a KV cache (self-attention keys/values grow, the
cross-attention keys/values of the encoder output are computed at the first step)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from nemo_peft.models.generation import Decoding, SamplingParams


@torch.no_grad()
@torch.compiler.set_stance("force_eager")  # as generation.generate: decoding steps are not recompiled
def generate_seq2seq(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     params: SamplingParams | None = None, eos_id: int | None = None,
                     decoder_start_id: int | None = None, use_cache: bool = True,
                     all_done: Callable[[bool], bool] | None = None,
                     decode: Callable[[list[int]], str] | None = None,
                     max_new_tokens: int | None = None) -> list[list[int]]:
    """The generated tokens of each row of ``input_ids`` (padded on either side: T5's relative
    positions make the side irrelevant), cut as ``generation.generate`` cuts them (EOS and stop ids not
    included; a stop string's last token kept, its text cut by ``stopping.cut_at_stop``).

    ``decoder_start_id`` defaults to ``model.config.decoder_start_token_id``. ``use_cache=False``
    re-runs the whole model on the growing decoder input every step (a slow reference).
    ``all_done`` keeps processes of a sharded model in step (see ``generation.generate``).
    The repetition penalty, as transformers', sees the decoder's tokens (start token included), not
    the encoder input.
    """
    params = (params or SamplingParams()).with_max_new_tokens(max_new_tokens)
    if decoder_start_id is None:
        decoder_start_id = model.config.decoder_start_token_id
    b = input_ids.shape[0]
    device = input_ids.device
    mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.long()
    decoder_ids = torch.full((b, 1), decoder_start_id, dtype=torch.long, device=device)
    if use_cache:
        memory = model.encode(input_ids, mask)
        cache = model.new_kv_cache(b, params.max_new_tokens)
    state = Decoding(params, b, device, eos_id, decode, context_ids=decoder_ids)
    while True:
        if use_cache:
            hidden = model(attention_mask=mask, decoder_input_ids=decoder_ids[:, -1:], encoder_outputs=memory,
                           kv_cache=cache, return_hidden=True)
        else:
            hidden = model(input_ids, mask, decoder_ids, return_hidden=True)
        tok = state.step(model.logits(hidden[:, -1]))  # only the last position needs the LM head
        if state.over(all_done):
            break
        decoder_ids = torch.cat([decoder_ids, tok[:, None]], dim=1)
    return state.rows()
