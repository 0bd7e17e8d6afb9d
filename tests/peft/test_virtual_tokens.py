"""P-tuning, prompt tuning and prefix tuning: counts, gradients, save/load, training,
cached and padded generation, and P-tuning's inference table."""
import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from nemo_peft.core.adapter_io import CONFIG_NAME, HASH_KEY, WEIGHTS_NAME
from nemo_peft.models.generation import SamplingParams, generate
from nemo_peft.models.gpt_sft import GPTSFTModel
from nemo_peft.peft.base import PEFTConfig
from nemo_peft.peft.prefix import PrefixTuningPEFTConfig
from nemo_peft.peft.prompt_tuning import PromptTuningPEFTConfig
from nemo_peft.peft.ptuning import PromptEncoder, PtuningPEFTConfig
from tests.helpers import (FAMILIES, assert_only_adapters_get_grads, make_model, no_cache_greedy, peaky_model,
                           randomize_adapters)

N, E, B, ENC = 4, 8, 16, 16  # virtual tokens, P-tuning embedding/bottleneck dims, prefix MLP hidden
METHODS = {
    "ptuning": lambda: PtuningPEFTConfig(virtual_tokens=N, embedding_dim=E, bottleneck_dim=B),
    "ptuning_lstm": lambda: PtuningPEFTConfig(virtual_tokens=N, embedding_dim=E, bottleneck_dim=B,
                                              encoder_type="lstm"),
    "prompt": lambda: PromptTuningPEFTConfig(virtual_tokens=N),
    "prefix": lambda: PrefixTuningPEFTConfig(num_virtual_tokens=N),
    "prefix_proj": lambda: PrefixTuningPEFTConfig(num_virtual_tokens=N, prefix_projection=True,
                                                  encoder_hidden_size=ENC),
}
MAIN = ["ptuning", "prompt", "prefix"]
IDS = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))


@pytest.fixture(params=["llama", "gpt2"])
def fam(request):
    return request.param


def expected_count(method, family):
    c = FAMILIES[family]
    h, layers, heads = c["hidden_size"], c["num_layers"], c["num_attention_heads"]
    kv, hd = c.get("num_query_groups") or heads, h // heads
    if method == "ptuning":
        return N * E + (E * B + B) + (B * h + h)
    if method == "ptuning_lstm":  # 2-layer biLSTM (4 gates, two biases) + linear head
        lstm = 2 * (4 * B * E + 4 * B * B + 8 * B) + 2 * (4 * B * 2 * B + 4 * B * B + 8 * B)
        return N * E + lstm + 2 * B * h + h
    if method == "prompt":
        return N * h
    if method == "prefix":
        return layers * 2 * kv * N * hd
    return layers * (N * h + h * ENC + ENC + ENC * 2 * kv * hd + 2 * kv * hd)


def adapted(family, method, randomized=True, model=None):
    model = model if model is not None else make_model(family)
    model.add_adapter(METHODS[method]())
    if randomized:
        randomize_adapters(model, std=0.3)
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_trainable_count_and_output_shape(fam, method):
    model = make_model(fam)
    base = model(IDS)
    model.add_adapter(METHODS[method]())
    assert model.num_trainable_parameters() == expected_count(method, fam)
    out = model(IDS)
    assert out.shape == base.shape  # virtual positions are cut from the output
    assert not torch.allclose(out, base)  # not unchanged at init: virtual tokens / prefixes are context


def test_prefix_layer_selection(fam):
    model = make_model(fam)
    model.add_adapter(PrefixTuningPEFTConfig(num_virtual_tokens=N, layer_selection=[1, 3]))
    assert model.num_trainable_parameters() == expected_count("prefix", fam) * 2 // 3
    paths = [p for p, s in model.adapter_slots_by_path().items() if "default" in s.adapters]
    assert paths == ["decoder.layers.0.self_attention.prefix", "decoder.layers.2.self_attention.prefix"]


@pytest.mark.parametrize("method", MAIN + ["prefix_proj"])
def test_only_adapter_params_get_gradients(fam, method):
    model = adapted(fam, method).train()
    model(IDS).logsumexp(-1).mean().backward()
    assert_only_adapters_get_grads(model)


@pytest.mark.parametrize("method", MAIN + ["ptuning_lstm", "prefix_proj"])
def test_save_load_identical_logits(fam, method, tmp_path):
    model = adapted(fam, method)
    ref = model(IDS)
    model.save_adapters(str(tmp_path))
    fresh = make_model(fam)
    assert fresh.load_adapters(str(tmp_path)) == ["default"]
    assert torch.equal(fresh(IDS), ref)
    assert PEFTConfig.from_dict(METHODS[method]().to_dict()) == METHODS[method]()


@pytest.mark.parametrize("method", MAIN)
def test_it_learns(fam, method):
    torch.manual_seed(0)
    model = adapted(fam, method, randomized=False, model=peaky_model(fam)).train()
    ids = torch.randint(1, 97, (4, 8), generator=torch.Generator().manual_seed(5))
    labels = torch.roll(ids, -1, 1)
    labels[:, 3:6] = torch.tensor([5, 6, 7])  # a fixed answer after any prompt
    mask = torch.zeros_like(ids)
    mask[:, 3:6] = 1
    batch = {"input_ids": ids, "labels": labels, "loss_mask": mask}
    sft = GPTSFTModel(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(30):
        loss = sft.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


@pytest.mark.parametrize("method", MAIN + ["ptuning+prefix"])
def test_cached_generation_equals_uncached_and_padding(fam, method):
    model = peaky_model(fam)
    if method == "ptuning+prefix":
        model.add_adapter([METHODS["ptuning"](), METHODS["prefix"]()])
    else:
        model.add_adapter(METHODS[method]())
    randomize_adapters(model, std=0.1)  # visible, yet not so strong that greedy decoding repeats one token
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(1, 97, (1, 7), generator=g), torch.randint(1, 97, (1, 3), generator=g)
    params = SamplingParams(max_new_tokens=8)
    got = generate(model, a, params=params)[0]
    assert got == no_cache_greedy(model, a, 8) and len(set(got)) > 1
    with model.disable_adapters():
        assert generate(model, a, params=params)[0] != got  # the adapter steers generation
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    rows = generate(model, batch, mask, params)
    assert rows == [got, generate(model, b, params=params)[0]]


def test_combined_ptuning_and_prefix_save_load(tmp_path):
    model = make_model("llama")
    model.add_adapter([METHODS["ptuning"](), METHODS["prefix"]()])
    randomize_adapters(model, std=0.3)
    n_expected = expected_count("ptuning", "llama") + expected_count("prefix", "llama")
    assert model.num_trainable_parameters() == n_expected
    ref = model(IDS)
    assert ref.shape == (2, 9, 97)
    model.save_adapters(str(tmp_path))
    fresh = make_model("llama")
    fresh.load_adapters(str(tmp_path))
    assert torch.equal(fresh(IDS), ref)


# ---- P-tuning's inference table ----

def encoder_of(model) -> PromptEncoder:
    return model.embedding.ptuning.adapters["default"]


def test_ptuning_generation_with_table_equals_encoder():
    model = adapted("llama", "ptuning", model=peaky_model("llama"))
    enc = encoder_of(model)
    calls = []
    enc.encoder.register_forward_hook(lambda *a: calls.append(1))
    params = SamplingParams(max_new_tokens=8)
    ids = IDS[:1]
    enc.refresh_table()
    calls.clear()
    with_table = generate(model, ids, params=params)[0]
    assert not calls  # eval mode: generation never runs the encoder
    enc.train()  # bypass the table: the encoder runs on every call
    with_encoder = generate(model, ids, params=params)[0]
    assert calls and with_table == with_encoder
    enc.eval()
    assert torch.equal(enc.inference_table, enc.encode().detach())


def test_ptuning_table_recomputed_after_training():
    model = adapted("llama", "ptuning").train()
    enc = encoder_of(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.eval()
    table0 = enc().clone()
    model.train()
    for _ in range(2):
        loss = model(IDS).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    table1 = enc()
    assert not torch.equal(table0, table1)
    assert torch.equal(table1, enc.encode().detach())
    with torch.no_grad():  # weights edited in place in eval mode: the table follows
        enc.embedding.mul_(2)
    assert torch.equal(enc(), enc.encode())


def test_ptuning_table_saved_and_loaded_table_used(tmp_path):
    model = adapted("llama", "ptuning")
    model.save_adapters(str(tmp_path))
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    key = "embedding.ptuning.adapters.default.inference_table"
    assert key in tensors and any(k.startswith("embedding.ptuning.adapters.default.encoder.") for k in tensors)
    assert torch.equal(tensors[key], encoder_of(model).encode().detach())
    # A different table in the file: the loaded model uses it as is (no recomputation).
    tensors[key] = torch.randn(tensors[key].shape)
    save_file(tensors, str(tmp_path / WEIGHTS_NAME))
    config = json.loads((tmp_path / CONFIG_NAME).read_text())  # a consistent pair: record the new file's hash
    config[HASH_KEY] = hashlib.sha256((tmp_path / WEIGHTS_NAME).read_bytes()).hexdigest()
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    fresh = make_model("llama")
    fresh.load_adapters(str(tmp_path))
    enc = encoder_of(fresh)
    assert torch.equal(enc(), tensors[key]) and not torch.equal(enc(), enc.encode())
    with torch.no_grad():
        ref = fresh.eval()(IDS)
        enc.train()
        assert not torch.allclose(fresh(IDS), ref)  # train mode uses the encoder
        enc.eval()  # ... and eval after train recomputes the table from the encoder
        assert torch.equal(enc(), enc.encode())


def test_ptuning_eval_mode_with_autograd_still_trains_the_encoder():
    model = adapted("llama", "ptuning")  # eval mode
    enc = encoder_of(model)
    out = enc()
    assert torch.equal(out, enc.inference_table)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_ptuning_freeze_to_table():
    model = adapted("llama", "ptuning")
    ref = model(IDS)
    encoder_of(model).freeze_to_table()
    assert torch.equal(model(IDS), ref)
    assert model.num_trainable_parameters() == 0
    assert list(model.adapter_state_dict()) == ["embedding.ptuning.adapters.default.inference_table"]


def test_ptuning_answer_only_loss():
    model = adapted("gpt2", "ptuning")
    ids = torch.randint(1, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    labels, mask = torch.roll(ids, -1, 1), torch.zeros_like(ids)
    mask[0, 5:7], mask[1, 3:7] = 1, 1
    loss = GPTSFTModel(model).loss({"input_ids": ids, "labels": labels, "loss_mask": mask})
    logits = model(ids)
    assert logits.shape[1] == ids.shape[1]
    manual = F.cross_entropy(logits[mask.bool()], labels[mask.bool()])
    assert torch.allclose(loss, manual, atol=1e-6)


def test_prompt_tuning_inits():
    model = make_model("llama")
    words = model.embedding.word_embeddings.weight
    model.add_adapter(PromptTuningPEFTConfig(virtual_tokens=5, init="text", init_token_ids=[7, 8, 9]))
    assert torch.equal(model.embedding.prompt.adapters["default"].weight, words[[7, 8, 9, 7, 8]])
    model.add_adapter(PromptTuningPEFTConfig(virtual_tokens=3, init="vocab"), name="v")
    rows = model.embedding.prompt.adapters["v"].weight
    assert all((words == r).all(-1).any() for r in rows)
    with pytest.raises(ValueError, match="init_token_ids"):
        make_model("llama").add_adapter(PromptTuningPEFTConfig(init="text", init_text="hello"))
    with pytest.raises(ValueError, match="init="):
        PromptTuningPEFTConfig(init="bogus")
    cfg = PEFTConfig.from_dict({"method": "prompt_tuning", "prompt_tuning_init": "SAMPLE_VOCAB"})
    assert cfg.init == "vocab"
