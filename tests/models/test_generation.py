import pytest
import torch

from nemo_peft.models.generation import SamplingParams, generate
from tests.helpers import no_cache_greedy, peaky_model


def test_cached_greedy_equals_uncached(family):
    model = peaky_model(family)
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(0))
    got = generate(model, ids, params=SamplingParams(max_new_tokens=12))[0]
    ref = no_cache_greedy(model, ids, 12)
    assert got == ref and len(set(ref)) > 1


def test_left_padded_batch_equals_rows_alone(family):
    model = peaky_model(family)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(1, 97, (1, 7), generator=g), torch.randint(1, 97, (1, 3), generator=g)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    params = SamplingParams(max_new_tokens=8)
    rows = generate(model, batch, mask, params)
    assert rows[0] == generate(model, a, params=params)[0]
    assert rows[1] == generate(model, b, params=params)[0]


def test_stops_at_eos():
    model = peaky_model("llama")
    ids = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(2))
    full = generate(model, ids, params=SamplingParams(max_new_tokens=10))[0]
    eos = full[3]
    cut = generate(model, ids, params=SamplingParams(max_new_tokens=10), eos_id=eos)[0]
    assert cut == full[:full.index(eos)]


def test_sampling_is_seeded_and_respects_top_k():
    model = peaky_model("llama")
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(3))
    p = SamplingParams(max_new_tokens=6, greedy=False, temperature=1.0, top_k=1, seed=7)
    assert generate(model, ids, params=p) == generate(model, ids, params=SamplingParams(max_new_tokens=6))
    p = SamplingParams(max_new_tokens=6, greedy=False, temperature=2.0, top_p=0.9, seed=7)
    assert generate(model, ids, params=p) == generate(model, ids, params=p)


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
