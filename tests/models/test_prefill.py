"""Prefill in groups of similar length (models/prefill.py): the grouping is optimal, and the cache and
last hidden states it leaves equal those of prefilling the padded batch at once."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_peft.models import prefill as prefill_module
from nemo_peft.models.generation import SamplingParams, generate
from nemo_peft.models.prefill import length_groups, prefill
from nemo_peft.peft.prefix import PrefixTuningPEFTConfig
from nemo_peft.peft.prompt_tuning import PromptTuningPEFTConfig
from tests.helpers import peaky_model, randomize_adapters


def padded_cost(lengths, groups, group_cost):
    return sum(len(g) * max(lengths[r] for r in g) + group_cost for g in groups)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=8), st.integers(0, 100))
def test_length_groups_is_the_cheapest_split_of_the_sorted_rows(lengths, group_cost):
    groups = length_groups(lengths, group_cost)
    assert sorted(r for g in groups for r in g) == list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    best = min(  # brute force: every way to cut the sorted rows into runs
        padded_cost(lengths, [order[a:b] for a, b in zip((0,) + cuts, cuts + (len(order),))], group_cost)
        for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k))
    assert padded_cost(lengths, groups, group_cost) == best


def test_length_groups_bounds():
    lengths = [21, 50, 22, 49, 23, 48]
    assert length_groups(lengths, 10_000) == [[0, 2, 4, 5, 3, 1]]  # groups too dear: one, sorted
    assert [sorted(g) for g in length_groups(lengths, 0)] == [[0], [2], [4], [5], [3], [1]]


def left_padded(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, t - n:] = torch.randint(1, 97, (n,), generator=g)
        mask[r, t - n:] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


ADAPTERS = {"none": None, "prompt": lambda: PromptTuningPEFTConfig(virtual_tokens=3),
            "prefix": lambda: PrefixTuningPEFTConfig(num_virtual_tokens=3)}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_grouped_prefill_equals_the_batch_at_once(family, adapter):
    model = peaky_model(family)
    if ADAPTERS[adapter]:
        model.add_adapter(ADAPTERS[adapter]())
        randomize_adapters(model, std=0.3)
    model.eval()
    lengths = [5, 2, 9, 3, 9, 6]
    ids, mask, positions = left_padded(lengths)
    with torch.no_grad():
        once, groups = model.new_kv_cache(6, 12), model.new_kv_cache(6, 12)
        want = prefill(model, ids, mask, positions, once, grouped=False)
        got = prefill(model, ids, mask, positions, groups, group_cost=0)
    assert len(length_groups(lengths, 0)) == 5 and groups.length == once.length
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # every position a later step attends to holds the same keys and values (padding is masked, not copied)
    front = once.length - ids.shape[1]
    seen = torch.cat([torch.ones(6, front, dtype=torch.bool), mask.bool()], 1)
    for a, b in ((groups.k, once.k), (groups.v, once.v)):
        torch.testing.assert_close(a[:, :, :, :once.length].permute(1, 3, 0, 2, 4)[seen],
                                   b[:, :, :, :once.length].permute(1, 3, 0, 2, 4)[seen], atol=1e-5, rtol=1e-5)


def test_generation_with_grouped_prefill_equals_each_row_alone(family, monkeypatch):
    monkeypatch.setattr(prefill_module, "GROUP_COST_TOKENS", 0)  # a group per length
    model = peaky_model(family)
    lengths = [7, 3, 5, 3]
    ids, mask, _ = left_padded(lengths, seed=4)
    sizes = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape)))
    params = SamplingParams(max_new_tokens=8)
    rows = generate(model, ids, mask, params)
    hook.remove()
    assert sizes[:3] == [(2, 3), (1, 5), (1, 7)]  # three prefill groups, each padded to its longest row
    t = ids.shape[1]
    assert rows == [generate(model, ids[r:r + 1, t - n:], params=params)[0] for r, n in enumerate(lengths)]


def grouped_and_at_once(model, ids, mask, params, monkeypatch):
    """generate() with a group per prompt length, and with the whole batch prefilled at once."""
    monkeypatch.setattr(prefill_module, "GROUP_COST_TOKENS", 0)
    grouped = generate(model, ids, mask, params)
    monkeypatch.setattr(prefill_module, "GROUP_COST_TOKENS", 10 ** 6)
    return grouped, generate(model, ids, mask, params)


def test_an_all_padding_row_decodes_as_in_the_ungrouped_batch(monkeypatch):
    model = peaky_model("llama")
    ids, mask, _ = left_padded([4, 2, 6], seed=7)
    ids[0], mask[0] = 0, 0  # an empty prompt: it sees only itself, as in the batch prefilled at once
    grouped, once = grouped_and_at_once(model, ids, mask, SamplingParams(max_new_tokens=5), monkeypatch)
    assert grouped == once


def test_grouped_prefill_under_a_sliding_window_decodes_as_the_batch_at_once(monkeypatch):
    model = peaky_model("llama", sliding_window=4)  # prompts longer than the window: the mask cuts them
    ids, mask, _ = left_padded([9, 3, 7, 6], seed=8)
    grouped, once = grouped_and_at_once(model, ids, mask, SamplingParams(max_new_tokens=6), monkeypatch)
    assert grouped == once
