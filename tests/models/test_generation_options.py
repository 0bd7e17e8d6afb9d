"""model.generation options beyond greedy/sampling: repetition_penalty (checked against transformers'
RepetitionPenaltyLogitsProcessor), stop strings, stop_token_ids and a per-call max_new_tokens, on the
GPT and the T5 decoding loops."""
import dataclasses

import pytest
import torch

from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.generation import RepetitionPenalty, SamplingParams, generate
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.models.seq2seq_generation import generate_seq2seq
from nemo_peft.models.stopping import cut_at_stop
from nemo_peft.models.t5 import T5Config, T5Model
from tests.helpers import make_model, peaky_model

transformers = pytest.importorskip("transformers")
HFPenalty = transformers.RepetitionPenaltyLogitsProcessor


def letters(ids):
    """A stand-in decode for the 97-token test models: one letter per id."""
    return "".join(chr(97 + i % 26) for i in ids)


def hf_penalised_greedy(model, ids, n, penalty):
    """Greedy decoding of one row, full forward per token, logits through transformers' processor."""
    out = []
    for _ in range(n):
        logits = HFPenalty(penalty)(ids, model(ids)[:, -1])
        tok = logits.argmax(-1)
        out.append(int(tok))
        ids = torch.cat([ids, tok[:, None]], 1)
    return out


def test_penalty_equals_transformers_on_the_same_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 4
    seen = torch.randint(0, 50, (3, 12), generator=g)  # repeats and both signs of logits
    for penalty in (1.3, 0.7):
        ours = RepetitionPenalty(penalty, seen)(logits.clone())
        torch.testing.assert_close(ours, HFPenalty(penalty)(seen, logits.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("penalty", [1.5, 3.0])
def test_greedy_with_penalty_equals_transformers_reference(penalty):
    model = peaky_model("llama")
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf_penalised_greedy(model, ids, 14, penalty)
    got = generate(model, ids, params=SamplingParams(max_new_tokens=14, repetition_penalty=penalty))[0]
    assert got == ref
    assert got != generate(model, ids, params=SamplingParams(max_new_tokens=14))[0]  # the penalty matters here


def padded(rows):
    """Left-pad rows of different lengths with id 0 (also a real token of the rows: padding must not count)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_batched_rows_stopping_at_different_steps_equal_each_row_alone():
    model = peaky_model("llama")
    g = torch.Generator().manual_seed(5)
    rows = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (7, 3, 5)]
    rows[1][0] = 0
    base = SamplingParams(max_new_tokens=12, repetition_penalty=1.4)
    alone = [generate(model, torch.tensor([r]), params=base)[0] for r in rows]
    # stop row 0 at a string, row 1 at a stop id, row 2 runs to the end
    stop_text = letters(alone[0][3:5])
    stop_id = alone[1][6]
    params = dataclasses.replace(base, stop=[stop_text], stop_token_ids=[stop_id])
    ids, mask = padded(rows)
    batched = generate(model, ids, mask, params, decode=letters)
    each = [generate(model, torch.tensor([r]), params=params, decode=letters)[0] for r in rows]
    assert batched == each
    lengths = [len(r) for r in batched]
    assert len(set(lengths)) == 3 and stop_id not in batched[1]
    assert stop_text in letters(batched[0]) and stop_text not in letters(batched[0][:-1])
    assert cut_at_stop(letters(batched[0]), [stop_text]) == letters(alone[0])[:letters(alone[0]).find(stop_text)]


def test_finished_rows_leave_the_batch_with_unchanged_outputs():
    model = peaky_model("llama")
    g = torch.Generator().manual_seed(6)
    rows = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (6, 4, 5)]
    base = SamplingParams(max_new_tokens=10)
    alone = [generate(model, torch.tensor([r]), params=base)[0] for r in rows]
    params = dataclasses.replace(base, stop_token_ids=[alone[0][2], alone[1][5]])
    sizes = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    ids, mask = padded(rows)
    shrinking = generate(model, ids, mask, params)
    steps_shrinking, sizes[:] = list(sizes), []
    fixed = generate(model, ids, mask, params, all_done=lambda done: done)  # a sharded model's path: no shrinking
    hook.remove()
    assert shrinking == fixed == [generate(model, torch.tensor([r]), params=params)[0] for r in rows]
    assert set(sizes) == {3}  # every forward of the fixed path ran all rows
    assert steps_shrinking == sorted(steps_shrinking, reverse=True) and steps_shrinking[-1] < 3


def test_stop_string_cut_and_max_new_tokens_override():
    assert cut_at_stop("answer: 42\nQ: next", ["\nQ:", "42"]) == "answer: "  # the earliest stop wins
    assert cut_at_stop("no stop here", ["###"]) == "no stop here"
    model = peaky_model("llama")
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(6))
    params = SamplingParams(max_new_tokens=10)
    short = generate(model, ids, params=params, max_new_tokens=4)
    assert short == [r[:4] for r in generate(model, ids, params=params)] and params.max_new_tokens == 10
    assert params.with_max_new_tokens(3).max_new_tokens == 3
    with pytest.raises(ValueError, match="need the tokenizer's decode"):
        generate(model, ids, params=SamplingParams(stop=["x"]))


def test_t5_penalty_stops_and_batch_equal_rows_alone():
    torch.manual_seed(0)
    model = T5Model(T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                             relative_attention_num_buckets=8, relative_attention_max_distance=16,
                             decoder_start_token_id=0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8)
    g = torch.Generator().manual_seed(7)
    rows = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (6, 4)]
    base = SamplingParams(max_new_tokens=10, repetition_penalty=2.0)
    alone = [generate_seq2seq(model, torch.tensor([r]), None, base)[0] for r in rows]
    # transformers' penalty sees the decoder's tokens, start token included
    with torch.no_grad():
        dec, ref = torch.zeros(1, 1, dtype=torch.long), []
        for _ in range(10):
            logits = HFPenalty(2.0)(dec, model(torch.tensor([rows[0]]), None, dec)[:, -1])
            ref.append(int(logits.argmax(-1)))
            dec = torch.cat([dec, logits.argmax(-1)[:, None]], 1)
    assert alone[0] == ref
    params = dataclasses.replace(base, stop=[letters(alone[0][2:4])], stop_token_ids=[alone[1][5]])
    ids = torch.tensor([rows[0], rows[1] + [0, 0]])
    mask = torch.tensor([[1] * 6, [1] * 4 + [0, 0]])
    batched = generate_seq2seq(model, ids, mask, params, decode=letters)
    assert batched == [generate_seq2seq(model, torch.tensor([r]), None, params, decode=letters)[0] for r in rows]
    assert batched == [alone[0][:4], alone[1][:5]]
    assert generate_seq2seq(model, ids, mask, params, decode=letters, use_cache=False) == batched


def test_module_stops_on_special_token_strings_and_the_config_eos_list():
    tok = Tokenizer.byte_level()  # <s>=256, </s>=257, <pad>=258
    torch.manual_seed(0)
    gpt = make_model("llama", vocab_size=tok.vocab_size)
    with torch.no_grad():
        for p in gpt.parameters():
            if p.dim() > 1:
                p.mul_(8)
    ctx = torch.tensor([[72, 105, 33]])
    batch = {"context_ids": ctx, "context_mask": torch.ones_like(ctx)}
    full = GPTSFTModel(gpt, tok, generation={"max_new_tokens": 8}).generate_ids(batch)[0]
    m = GPTSFTModel(gpt, tok, generation={"max_new_tokens": 8, "stop": ["<pad>"]})
    assert tok.backend.token_to_id("<pad>") in m.generation_kwargs()["params"].stop_token_ids
    gpt.config.extra = {"eos_token_ids": [257, full[2]]}
    m = GPTSFTModel(gpt, tok, generation={"max_new_tokens": 8})
    assert m.generate_ids(batch)[0] == full[:full.index(full[2])]


def test_bad_generation_values_and_unknown_keys():
    with pytest.raises(ValueError, match=r"repetition_penalty must be > 0, got 0 \(model\.generation"):
        SamplingParams(repetition_penalty=0)
    with pytest.raises(ValueError, match="stop must be a list of non-empty strings"):
        SamplingParams(stop=["ok", ""])
    with pytest.raises(ValueError, match="stop_token_ids must be a list of token ids"):
        SamplingParams(stop_token_ids=["2"])
    assert SamplingParams(stop="\n").stop == ["\n"]  # a lone string is one stop, not its characters
    assert SamplingParams.from_dict({"stop": ["###"], "stop_token_ids": [2], "repetition_penalty": 1.2}).stop == ["###"]
    with pytest.raises(ValueError, match=r"Unknown model\.generation option\(s\) \['repetition_penalty_x'\]; "
                                         r"valid options: .*'repetition_penalty', 'seed', 'stop', 'stop_token_ids'"):
        SamplingParams.from_dict({"repetition_penalty_x": 1.2})
