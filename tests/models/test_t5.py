"""T5Model: KV-cached seq2seq generation, adapters in every attention and MLP, seq2seq data, T5SFTModel."""
from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nemo_peft.data.collate import collate_seq2seq
from nemo_peft.data.seq2seq_dataset import Seq2SeqDataModule, Seq2SeqDataset
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.models.generation import SamplingParams
from nemo_peft.models.t5_sft import T5SFTModel
from nemo_peft.models.t5 import T5Config, T5Model
from nemo_peft.modules.chunked_loss import IGNORE_INDEX
from nemo_peft.peft.bottleneck import CanonicalAdaptersPEFTConfig
from nemo_peft.peft.ia3 import IA3PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.models.seq2seq_generation import generate_seq2seq
from tests.helpers import randomize_adapters

TINY = dict(vocab_size=259, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=16,
            pad_token_id=258, eos_token_id=257, decoder_start_token_id=258)
ALL_ATTENTION = ["linear_qkv", "linear_q", "linear_kv", "linear_proj"]


def make_t5(seed=0, **overrides) -> T5Model:
    torch.manual_seed(seed)
    return T5Model(T5Config(**{**TINY, **overrides})).eval()


def batch(seed=1, s=9, t=6, pad=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, s), generator=g)
    mask = torch.ones(2, s, dtype=torch.long)
    mask[1, s - pad:] = 0
    dec = torch.randint(0, 256, (2, t), generator=g)
    dec[:, 0] = 258
    return ids, mask, dec


# --- the model ------------------------------------------------------------------------------

def test_cached_decoding_matches_full_forward():
    model = make_t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    ids, mask, dec = batch()
    with torch.no_grad():
        full = model(ids, mask, dec)
        memory = model.encode(ids, mask)
        cache = model.new_kv_cache(2, dec.shape[1])
        steps = [model(attention_mask=mask, decoder_input_ids=dec[:, i:i + 1], encoder_outputs=memory,
                       kv_cache=cache) for i in range(dec.shape[1])]
        assert all(c is not None for c in cache.cross) and cache.length == dec.shape[1]
        two_chunks = model.new_kv_cache(2, dec.shape[1])  # a prefill of several tokens, then single steps
        first = model(ids, mask, dec[:, :4], kv_cache=two_chunks)
        rest = model(attention_mask=mask, decoder_input_ids=dec[:, 4:], kv_cache=two_chunks)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("params", [dict(greedy=True), dict(greedy=False, top_k=20, top_p=0.9, seed=7)])
def test_generation_with_cache_equals_without(params):
    model = make_t5()
    ids, mask, _ = batch()
    sampling = SamplingParams(max_new_tokens=8, **params)
    cached = generate_seq2seq(model, ids, mask, sampling, eos_id=None, decoder_start_id=258)
    full = generate_seq2seq(model, ids, mask, sampling, eos_id=None, decoder_start_id=258, use_cache=False)
    assert cached == full and all(len(r) == 8 for r in cached)
    if params["greedy"]:  # a padded row generates what it generates alone
        assert generate_seq2seq(model, ids[1:, :6], None, sampling, decoder_start_id=258)[0] == cached[1]
        eos = cached[0][3]
        cut = generate_seq2seq(model, ids, mask, sampling, eos_id=eos, decoder_start_id=258)
        assert cut[0] == cached[0][:cached[0].index(eos)]


def test_padding_side_does_not_matter():
    """Relative positions depend on distances only, so left and right padding give the same outputs."""
    model = make_t5()
    ids, mask, dec = batch()
    with torch.no_grad():
        right = model(ids, mask, dec)
        left = model(ids.roll(3, dims=1)[1:], mask.roll(3, dims=1)[1:], dec[1:])
    torch.testing.assert_close(left[0], right[1], atol=1e-5, rtol=1e-5)


def test_errors_name_the_missing_input():
    model = make_t5()
    ids, mask, dec = batch()
    with pytest.raises(ValueError, match="decoder_input_ids"):
        model(ids, mask)
    with pytest.raises(ValueError, match="input_ids or encoder_outputs"):
        model(decoder_input_ids=dec)
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-mish")
    with pytest.raises(ValueError, match="Unknown T5Config keys"):
        T5Config.from_dict({"hidden_size": 3})
    assert T5Config.from_dict(make_t5().config.to_dict()) == make_t5().config


# --- adapters -------------------------------------------------------------------------------

def test_lora_on_all_attentions():
    model = make_t5()
    ids, mask, dec = batch()
    with torch.no_grad():
        base = model(ids, mask, dec)
    model.add_adapter(LoraPEFTConfig(target_modules=ALL_ATTENTION, dim=4))
    slots = {p.rsplit(".", 1)[0].split(".", 1)[0] + "." + p.rsplit(".", 1)[1]
             for p, s in model.adapter_slots_by_path().items() if s.adapters}
    assert slots == {"encoder.lora_qkv", "encoder.lora_proj", "decoder.lora_qkv", "decoder.lora_proj",
                     "decoder.lora_q", "decoder.lora_kv"}
    assert sum(1 for s in model.adapter_slots_by_path().values() if s.adapters) == 2 * 2 + 2 * 5
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask, dec), base)  # B starts at zero: unchanged at init
    randomize_adapters(model, seed=3, std=0.3, add=True)
    loss = F.cross_entropy(model(ids, mask, dec).flatten(0, 1), torch.roll(dec, -1, 1).flatten())
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n in dict(model.named_parameters()) if ".adapters." in n}
    assert all(p.requires_grad == (".adapters." in n) for n, p in model.named_parameters())


def test_lora_save_load_identical_logits(tmp_path):
    model = make_t5()
    model.add_adapter(LoraPEFTConfig(target_modules=ALL_ATTENTION + ["linear_fc1", "linear_fc2"], dim=2))
    randomize_adapters(model, seed=3, std=0.3, add=True)
    ids, mask, dec = batch()
    with torch.no_grad():
        want = model(ids, mask, dec)
        assert (want - model.disable_adapters().__enter__()(ids, mask, dec)).abs().max() > 1e-3
    model.set_active_adapters(["default"])
    model.save_adapters(str(tmp_path / "lora"))
    fresh = make_t5()
    assert fresh.load_adapters(str(tmp_path / "lora")) == ["default"]
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids, mask, dec), want, atol=0, rtol=0)


def test_ia3_and_lora_merge_including_cross_attention():
    model = make_t5(feed_forward_proj="gated-gelu")
    model.add_adapter([LoraPEFTConfig(target_modules=["linear_qkv", "linear_kv", "linear_fc1"], dim=2),
                       IA3PEFTConfig()])
    cross = model.decoder.layers[0].cross_attention
    assert "default" in cross.ia3_key.adapters and "default" in cross.lora_kv.adapters
    assert "default" in model.encoder.layers[1].mlp.ia3_mlp.adapters
    randomize_adapters(model, seed=3, std=0.3, add=True)
    ids, mask, dec = batch()
    with torch.no_grad():
        want = model(ids, mask, dec)
        model.merge_adapters()
        torch.testing.assert_close(model(ids, mask, dec), want, atol=1e-4, rtol=1e-4)
        model.unmerge_adapters()
        torch.testing.assert_close(model(ids, mask, dec), want, atol=1e-4, rtol=1e-4)


def test_canonical_adapters_fill_both_residual_slots():
    model = make_t5()
    ids, mask, dec = batch()
    with torch.no_grad():
        base = model(ids, mask, dec)
    model.add_adapter(CanonicalAdaptersPEFTConfig(adapter_dim=4, norm_type="rmsnorm"))
    filled = [p for p, s in model.adapter_slots_by_path().items() if s.adapters]
    assert len(filled) == 2 * (2 + 2) and all(p.endswith(("adapter_post_attn", "adapter_post_mlp")) for p in filled)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask, dec), base)


class _Const(nn.Module):
    def __init__(self, *shape):
        super().__init__()
        self.p = nn.Parameter(torch.randn(*shape) * 0.5)

    def forward(self):
        return self.p


class _Prefix(nn.Module):
    def __init__(self, heads, n, head_dim):
        super().__init__()
        self.k, self.v = nn.Parameter(torch.randn(heads, n, head_dim)), nn.Parameter(torch.randn(heads, n, head_dim))

    def forward(self):
        return self.k, self.v


def test_virtual_tokens_and_prefixes_with_the_cache():
    """Prompt slots prepend virtual tokens to the encoder input; prefix slots prepend keys/values
    to every self-attention; both work with the decoder cache."""
    model = make_t5()
    ids, mask, dec = batch()
    with torch.no_grad():
        base = model(ids, mask, dec)
    model.embedding.prompt.add("p", _Const(3, 32))
    for path, slot in model.adapter_slots_by_path().items():
        if path.endswith("self_attention.prefix"):
            slot.add("p", _Prefix(4, 2, 8))
    model._adapter_configs = {"p": []}
    model.set_active_adapters(["p"])
    with torch.no_grad():
        assert model.encode(ids, mask).shape == (2, 3 + ids.shape[1], 32)
        full = model(ids, mask, dec)
        assert (full - base).abs().max() > 1e-3
        cache = model.new_kv_cache(2, dec.shape[1])  # later steps without encoder_outputs: mask still fits
        steps = [model(ids, mask, dec[:, :2], kv_cache=cache),
                 model(attention_mask=mask, decoder_input_ids=dec[:, 2:], kv_cache=cache)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    sampling = SamplingParams(max_new_tokens=5)
    assert generate_seq2seq(model, ids, mask, sampling) == generate_seq2seq(model, ids, mask, sampling,
                                                                            use_cache=False)


# --- data -----------------------------------------------------------------------------------

def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_dataset_items_and_collate(tmp_path):
    tok = Tokenizer.byte_level()
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "abc", "answer": "xy", "id": 1}, "",
                                              {"question": "a", "answer": "long answer"}])
    ds = Seq2SeqDataset(path, tok, context_key="question", label_key="answer", max_seq_length=8,
                        max_target_length=5)
    assert len(ds) == 2
    item = ds[0]
    assert item["input_ids"] == tok.encode("abc") + [257] and item["label_ids"] == tok.encode("xy") + [257]
    assert item["answer"] == "xy" and item["metadata"]["id"] == 1
    assert ds[1]["label_ids"] == tok.encode("long")[:4] + [257]  # cut from the right, EOS kept
    b = collate_seq2seq([ds[0], ds[1]], pad_id=258, decoder_start_id=258)
    assert b["input_ids"].tolist() == [tok.encode("abc") + [257], tok.encode("a") + [257, 258, 258]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert b["labels"][0].tolist() == tok.encode("xy") + [257, IGNORE_INDEX, IGNORE_INDEX]
    assert b["decoder_input_ids"][0].tolist() == [258] + tok.encode("xy") + [258, 258]
    assert b["decoder_input_ids"][1].tolist() == [258] + ds[1]["label_ids"][:-1]
    assert b["decoder_attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    assert b["answers"] == ["xy", "long answer"]


def test_dataset_errors_name_file_and_line(tmp_path):
    tok = Tokenizer.byte_level()
    path = write_jsonl(tmp_path / "bad.jsonl", [{"input": "a", "output": "b"}, {"input": "a"}])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: record has no label field 'output'"):
        Seq2SeqDataset(path, tok)
    path = write_jsonl(tmp_path / "bad2.jsonl", ["{not json"])
    with pytest.raises(ValueError, match=r"bad2.jsonl, line 1: malformed JSON"):
        Seq2SeqDataset(path, tok)
    path = write_jsonl(tmp_path / "bad3.jsonl", [{"text": "a", "output": "b"}])
    with pytest.raises(ValueError, match=r"line 1: record has no context field 'input'.*context_key"):
        Seq2SeqDataset(path, tok)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        Seq2SeqDataset(str(tmp_path / "nope.jsonl"), tok)
    with pytest.raises(ValueError, match="Unknown key 'prompt_template' in train_ds"):
        Seq2SeqDataModule(tok, train_ds={"file_names": path, "prompt_template": "{input}"})


# --- T5SFTModel -----------------------------------------------------------------------------

@pytest.fixture
def tiny_task(tmp_path):
    """Reverse three letters: "abc" -> "cba"."""
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcd") for _ in range(3)) for _ in range(40)]
    return write_jsonl(tmp_path / "train.jsonl", [{"input": w, "output": w[::-1]} for w in words])


def test_sft_model_loss_falls_and_checkpoints_hold_adapters_only(tmp_path, tiny_task):
    tok = Tokenizer.byte_level()
    module = T5SFTModel(make_t5(), tok, optim={"lr": 1e-2, "scheduler": "constant"},
                        generation={"max_new_tokens": 4})
    module.add_adapter(LoraPEFTConfig(target_modules=ALL_ATTENTION + ["linear_fc1", "linear_fc2"], dim=4))
    data = Seq2SeqDataModule(tok, 258, train_ds={"file_names": tiny_task, "micro_batch_size": 8},
                             predict_ds={"file_names": tiny_task, "micro_batch_size": 4, "max_num_samples": 4})
    data.setup("fit")
    fixed = next(iter(data.train_dataloader()))
    with torch.no_grad():
        before = module.loss(fixed).item()
        hidden = module.model(fixed["input_ids"], fixed["attention_mask"], fixed["decoder_input_ids"])
        keep = fixed["labels"] != IGNORE_INDEX
        torch.testing.assert_close(module.loss(fixed), F.cross_entropy(hidden[keep], fixed["labels"][keep]))
    trainer = L.Trainer(max_steps=25, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)
    module.eval()
    with torch.no_grad():
        after = module.loss(fixed).item()
    assert after < 0.7 * before, (before, after)
    ckpt = str(tmp_path / "a.ckpt")
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert state["state_dict"] and all(".adapters." in k for k in state["state_dict"])
    assert list(state["nemo_peft_adapters"]) == ["default"]
    preds = trainer.predict(module, datamodule=data)
    rows = [r for b in preds for r in b]
    assert len(rows) == 4 and set(rows[0]) == {"input", "prediction", "label"}
    metrics = trainer.validate(module, dataloaders=data.predict_dataloader(), verbose=False)[0]
    assert {"val_loss", "val_exact_match"} <= set(metrics) and 0 <= metrics["val_exact_match"] <= 100
