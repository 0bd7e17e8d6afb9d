"""What a decoded token costs besides reading the weights, measured directly on a narrow twin.

The twin has the model's layers, heads, RoPE, norms, KV cache and adapter slots, so it runs the same
operators, module calls and framework code per token, but with 8-dim heads (hidden 72 for 9 heads), an
FFN of 64 and a 512-token vocabulary: for the default model 155x fewer weight bytes (3.5 of 538 MB a token),
which stay in the CPU's caches, so its GEMVs read next to nothing.
Its time per token is the per-token cost of everything else (Python, dispatch, small kernels, each
linear's fixed per-call cost), without the profiler's per-call inflation. Added to the weight bytes at
the measured bandwidth it gives the best a batch-1 decode step can do with that framework cost.
HF's side is the same twin through ``hf_twin`` (same weights), decoded with ``generate``.
"""
from __future__ import annotations

import dataclasses

import torch

HEAD_DIM, FFN, VOCAB = 8, 64, 512


def narrow_twin(ours):
    """A randomly initialised GPTModel with ``ours``' depth, heads and settings and narrow widths."""
    cfg = ours.config
    narrow = dataclasses.replace(cfg, hidden_size=cfg.num_attention_heads * HEAD_DIM, kv_channels=HEAD_DIM,
                                 ffn_hidden_size=FFN, vocab_size=VOCAB, extra={})
    torch.manual_seed(0)
    return type(ours)(narrow).eval()


def per_token_ms(args, ours, decode_ours, decode_hf, tokens: int) -> tuple[list, list, bool, float]:
    """Batch-1 greedy decode of ``tokens`` new tokens after an ``args.prompt``-token prompt on both twins,
    alternated (``decode_ours``/``decode_hf``: bench_lora's). Returns the ms per token of each timed run
    (ours, HF), whether the two sides' tokens agree, and how many times fewer weight bytes the twin has."""
    from benchmarks.common import alternate, hf_twin, timed
    from benchmarks.roofline import decode_bytes  # the weight bytes the decode bound counts
    twin = narrow_twin(ours)
    hf = hf_twin(twin)
    prompt = torch.randint(3, VOCAB, (1, args.prompt), generator=torch.Generator().manual_seed(2))
    sides, got = {"ours": (decode_ours, twin), "hf": (decode_hf, hf)}, {}

    def fn(side):
        dec, m = sides[side]
        return 1e3 * timed(lambda: got.__setitem__(side, dec(m, prompt, tokens))) / tokens
    with torch.inference_mode():
        a, b = alternate(fn, args.decode_reps, 1)
    return a, b, got["ours"] == got["hf"], decode_bytes(ours.config) / decode_bytes(twin.config)


def overhead_verdict(ours_ms: float, hf_ms: float, shrink: float, bound_tok_s: float, target: float = 0.8) -> str:
    """The best batch-1 decode our per-token framework cost allows: the weights read at the bound, then
    everything else as the twin measured it (one after the other: nothing overlaps a GEMV in eager mode)."""
    bound_ms = 1e3 / bound_tok_s
    best = bound_ms / (bound_ms + ours_ms)
    allowed = bound_ms / target - bound_ms
    return (f"batch-1 decode, per-token cost besides the weights (narrow twin: same layers and operators, "
            f"{shrink:.0f}x fewer weight bytes): nemo_peft {ours_ms:.1f} ms, HF+peft {hf_ms:.1f} ms a token. Even with "
            f"the weights read at exactly the bound ({bound_ms:.1f} ms a token), ours would reach "
            f"{100 * best:.0f}% of the bound; {100 * target:.0f}% allows {allowed:.1f} ms a token for everything "
            "else.")
