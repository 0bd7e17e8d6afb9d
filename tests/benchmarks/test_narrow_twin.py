"""benchmarks/narrow_twin.py: the twin runs the model's operators per decoded token on a fraction of the
weights, both sides decode it to the same tokens, and the verdict's arithmetic."""
import types

import pytest
import torch

from benchmarks import narrow_twin as nt
from benchmarks.bench_lora import decode_hf, decode_ours
from benchmarks.roofline import decode_bytes
from tests.helpers import make_model

GQA = dict(num_layers=3, num_attention_heads=6, num_query_groups=2, hidden_size=192, ffn_hidden_size=512,
           vocab_size=2000)


def decode_step_ops(model) -> dict[str, int]:
    """Operator name -> calls in one KV-cached decoding step after a 5-token prompt."""
    cache = model.new_kv_cache(1, 8)
    with torch.inference_mode():
        model(torch.tensor([[5, 6, 7, 8, 9]]), kv_cache=cache, return_hidden=True)
        with torch.profiler.profile() as prof:
            model.logits(model(torch.tensor([[10]]), position_ids=torch.tensor([[5]]), kv_cache=cache,
                               return_hidden=True)[:, -1])
    return {e.key: e.count for e in prof.key_averages()}


def test_twin_runs_the_same_operators_on_far_fewer_weights():
    model = make_model("llama", **GQA).eval()
    twin = nt.narrow_twin(model)
    for key in ("num_layers", "num_attention_heads", "num_query_groups", "normalization", "activation",
                "rotary_base", "position_embedding_type", "share_embeddings_and_output_weights"):
        assert getattr(twin.config, key) == getattr(model.config, key)
    assert twin.config.hidden_size == 6 * nt.HEAD_DIM and twin.config.vocab_size == nt.VOCAB
    assert decode_bytes(model.config) / decode_bytes(twin.config) > 20
    assert decode_step_ops(twin) == decode_step_ops(model)  # the same calls, as many of each


@pytest.mark.slow
def test_both_twins_decode_the_same_tokens():
    args = types.SimpleNamespace(prompt=6, decode_reps=1)
    model = make_model("llama", **GQA)
    a, b, same, shrink = nt.per_token_ms(args, model, decode_ours, decode_hf, tokens=4)
    assert len(a) == len(b) == 1 and min(a + b) > 0
    assert same
    assert shrink == decode_bytes(model.config) / decode_bytes(nt.narrow_twin(model).config)


def test_overhead_verdict_arithmetic():
    text = nt.overhead_verdict(15.0, 12.0, shrink=155.2, bound_tok_s=40.0)  # the bound: 25 ms a token
    assert "155x fewer weight bytes): nemo_peft 15.0 ms, HF+peft 12.0 ms" in text
    assert "(25.0 ms a token), ours would reach 62% of the bound" in text  # 25 / (25 + 15)
    assert "80% allows 6.2 ms" in text  # 25 / 0.8 - 25 = 6.25
