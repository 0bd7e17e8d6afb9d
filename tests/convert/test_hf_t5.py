"""Hugging Face T5 checkpoints: logits parity with transformers on tiny random models, export, tokenizer, errors."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_peft.convert.hf_t5 import hf_to_t5_config, load_hf_t5, save_hf_t5
from nemo_peft.models.t5 import T5Config, T5Model
from tests.helpers import HF_T5_CASES

transformers = pytest.importorskip("transformers")
T = transformers
TOL = 1e-4
VOCAB = 101
def _batch(seed=1, s=19, t=11, pad=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (2, s), generator=g)
    mask = torch.ones(2, s, dtype=torch.long)
    mask[1, s - pad:] = 0
    ids[1, s - pad:] = 0
    dec = torch.randint(2, VOCAB, (2, t), generator=g)
    dec[:, 0] = 0
    dec_mask = torch.ones(2, t, dtype=torch.long)
    dec_mask[0, t - 3:] = 0
    return ids, mask, dec, dec_mask


def _max_diff(hf_model, ours) -> float:
    """Max |logits| difference: no padding; encoder and decoder right padding (real decoder
    positions only); left padding of the encoder input (T5's relative positions ignore it)."""
    ids, mask, dec, dec_mask = _batch()
    with torch.no_grad():
        plain = (hf_model(input_ids=ids[:1], decoder_input_ids=dec[:1]).logits - ours(ids[:1], None, dec[:1]))
        ref = hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                       decoder_attention_mask=dec_mask).logits
        got = ours(ids, mask, dec, decoder_attention_mask=dec_mask)
        padded = (ref - got)[dec_mask.bool()]
        left = ours(ids[1:].roll(5, dims=1), mask[1:].roll(5, dims=1), dec[1:])  # row 1 is right-padded by 5
        left_diff = left[0] - got[1]
    return max(plain.abs().max().item(), padded.abs().max().item(), left_diff.abs().max().item())


@pytest.mark.parametrize("case", sorted(HF_T5_CASES))
def test_import_logits_match_transformers(tmp_path, case, hf_t5_checkpoint):
    hf_model, path = hf_t5_checkpoint(tmp_path, case)
    ours, tok = load_hf_t5(path)
    assert tok is None and not ours.training
    cfg = ours.config
    assert cfg.tie_word_embeddings == (not HF_T5_CASES[case][2])
    assert cfg.scale_decoder_outputs == (case == "t5_relu_tied")
    assert cfg.num_decoder_layers == (3 if case == "t5_relu_tied" else 2)
    diff = _max_diff(hf_model, ours)
    print(f"{case}: max abs logits diff {diff:.2e}")
    assert diff <= TOL, f"{case}: max abs diff {diff}"


def test_position_bias_and_scaling_really_matter(tmp_path, hf_t5_checkpoint):
    """Guards the parity test: the relative bias and the head scaling change these logits."""
    hf_model, path = hf_t5_checkpoint(tmp_path, "t5_relu_tied")
    ours = load_hf_t5(path)[0]
    ids, mask, dec, _ = _batch()
    with torch.no_grad():
        ref = ours(ids, mask, dec)
        ours.decoder.position_bias.relative_attention_bias.weight.zero_()
        assert (ours(ids, mask, dec) - ref).abs().max() > 1e-2
    ours = load_hf_t5(path)[0]
    ours.config.scale_decoder_outputs = False
    with torch.no_grad():
        assert (ours(ids, mask, dec) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("case", ["t5_relu_tied", "t5v1_1_gated_gelu_untied", "t5_tied_unscaled"])
def test_export_round_trip(tmp_path, case, hf_t5_checkpoint):
    _, path = hf_t5_checkpoint(tmp_path, case)
    ours = load_hf_t5(path)[0]
    out = str(tmp_path / "out")
    save_hf_t5(ours, out)
    with open(os.path.join(out, "config.json")) as f:
        hf_cfg = json.load(f)
    assert hf_cfg["architectures"] == ["T5ForConditionalGeneration"] and hf_cfg["model_type"] == "t5"
    hf_model, info = T.T5ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert _max_diff(hf_model.eval(), ours) <= TOL
    back = load_hf_t5(out)[0]
    ids, mask, dec, _ = _batch()
    with torch.no_grad():
        assert (back(ids, mask, dec) - ours(ids, mask, dec)).abs().max() <= TOL


def test_export_untied_scaled_folds_the_scale(tmp_path):
    """A from-scratch model with an untied head that is still scaled exports as untied/unscaled."""
    torch.manual_seed(0)
    model = T5Model(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4, tie_word_embeddings=False,
                             scale_decoder_outputs=True)).eval()
    out = str(tmp_path / "out")
    save_hf_t5(model, out)
    assert "lm_head.weight" in load_file(os.path.join(out, "model.safetensors"))
    hf_model = T.T5ForConditionalGeneration.from_pretrained(out).eval()
    assert _max_diff(hf_model, model) <= TOL


def test_export_skips_adapters_and_writes_generation_config(tmp_path):
    from nemo_peft.peft.lora import LoraPEFTConfig

    torch.manual_seed(0)
    model = T5Model(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_heads=4)).eval()
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv", "linear_kv"], dim=2))
    out = str(tmp_path / "out")
    save_hf_t5(model, out)
    assert not any("adapters" in k for k in load_file(os.path.join(out, "model.safetensors")))
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f) == {"decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}


# --- tokenizer ------------------------------------------------------------------------------

def _unigram_tokenizer():
    """A tiny T5-like SentencePiece Unigram tokenizer: <pad>=0, </s>=1, <unk>=2."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers

    pieces = ["<pad>", "</s>", "<unk>", "▁", "▁hello", "▁world", "▁the", "h", "e", "l", "o", "w", "r", "d", "t"]
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(pieces)]
    backend = Backend(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return backend


def test_unigram_tokenizer_import_and_export(tmp_path, hf_t5_checkpoint):
    _, path = hf_t5_checkpoint(tmp_path, "t5_relu_tied")
    backend = _unigram_tokenizer()
    backend.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "pad_token": "<pad>",
                   "unk_token": "<unk>"}, f)
    model, tok = load_hf_t5(path)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (None, 1, 0)
    assert tok.encode("hello the world") == backend.encode("hello the world", add_special_tokens=False).ids
    assert tok.decode(tok.encode("hello world")) == "hello world"
    out = str(tmp_path / "out")
    save_hf_t5(model, out, tokenizer=tok)
    hf_tok = T.AutoTokenizer.from_pretrained(out)
    assert hf_tok("hello world", add_special_tokens=False).input_ids == tok.encode("hello world")
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (1, 0)
    assert load_hf_t5(out)[1].encode("the world") == tok.encode("the world")


def test_special_ids_from_generation_config(tmp_path, hf_t5_checkpoint):
    _, path = hf_t5_checkpoint(tmp_path, "t5_relu_tied")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("decoder_start_token_id")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"decoder_start_token_id": 5, "eos_token_id": 1, "pad_token_id": 0}, f)
    assert load_hf_t5(path)[0].config.decoder_start_token_id == 5


# --- legacy files and errors ----------------------------------------------------------------

def test_legacy_v1_1_config_and_extra_tensors(tmp_path, hf_t5_checkpoint):
    """transformers 4.x files: tie_word_embeddings=false without scale_decoder_outputs, and the
    stale cross-attention relative bias plus explicit embed_tokens copies in the weights."""
    hf_model, path = hf_t5_checkpoint(tmp_path, "t5v1_1_gated_gelu_untied")
    cfg_path, weights = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    with open(cfg_path) as f:
        cfg = json.load(f)
    for k in ("scale_decoder_outputs", "is_gated_act", "dense_act_fn"):
        cfg.pop(k, None)
    cfg["tie_word_embeddings"] = False
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    sd = load_file(weights)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()
    sd["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(8, 4)
    save_file(sd, weights, metadata={"format": "pt"})
    ours = load_hf_t5(path)[0]
    assert not ours.config.tie_word_embeddings and not ours.config.scale_decoder_outputs
    assert _max_diff(hf_model, ours) <= TOL


@pytest.mark.parametrize("field,value", [
    ("feed_forward_proj", "gated-mish"), ("is_decoder", True), ("is_encoder_decoder", False),
    ("architectures", ["T5EncoderModel"]), ("quantization_config", {"quant_method": "bitsandbytes"}),
])
def test_unsupported_config_values(tmp_path, field, value, hf_t5_checkpoint):
    _, path = hf_t5_checkpoint(tmp_path, "t5_relu_tied")
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg[field] = value
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match=field):
        load_hf_t5(path)


def test_unsupported_model_type():
    with pytest.raises(ValueError, match="umt5"):
        hf_to_t5_config({"model_type": "umt5"})


def test_missing_and_unexpected_tensors(tmp_path, hf_t5_checkpoint):
    _, path = hf_t5_checkpoint(tmp_path, "t5_relu_tied")
    weights = os.path.join(path, "model.safetensors")
    sd = load_file(weights)
    sd["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(2)
    save_file(sd, weights)
    with pytest.raises(ValueError, match="unexpected tensors"):
        load_hf_t5(path)
    sd.pop("encoder.block.0.layer.0.SelfAttention.extra.weight")
    sd.pop("decoder.block.1.layer.1.EncDecAttention.k.weight")
    save_file(sd, weights)
    with pytest.raises(ValueError, match="EncDecAttention.k.weight.*missing"):
        load_hf_t5(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hf_t5(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no config.json"):
        load_hf_t5(str(tmp_path))


def test_load_in_bf16(tmp_path, hf_t5_checkpoint):
    _, path = hf_t5_checkpoint(tmp_path, "t5v1_1_gated_gelu_untied")
    ours = load_hf_t5(path, dtype=torch.bfloat16)[0]
    assert {p.dtype for p in ours.parameters()} == {torch.bfloat16}
    ref = load_hf_t5(path)[0]
    ids, mask, dec, _ = _batch()
    with torch.no_grad():
        got, want = ours(ids, mask, dec).float(), ref(ids, mask, dec)
    # bf16 rounding of random weights (transformers' own bf16 T5 is as far from fp32)
    assert torch.isfinite(got).all() and (got - want).abs().mean() < 0.1 * want.abs().mean()


@pytest.mark.parametrize("case", ["t5_relu_tied", "t5v1_1_gated_gelu_untied"])
def test_greedy_generation_matches_transformers(tmp_path, case, hf_t5_checkpoint):
    from nemo_peft.models.generation import SamplingParams
    from nemo_peft.models.seq2seq_generation import generate_seq2seq

    hf_model, path = hf_t5_checkpoint(tmp_path, case)
    ours, _ = load_hf_t5(path)
    ids, mask, _, _ = _batch()
    eos = 1
    with torch.no_grad():
        ref = hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                num_beams=1, eos_token_id=eos, pad_token_id=0, decoder_start_token_id=0,
                                use_cache=False)  # transformers sizes its cache by num_layers, not the decoder
    got = generate_seq2seq(ours, ids, mask, SamplingParams(max_new_tokens=12, greedy=True), eos_id=eos)
    for row, tokens in zip(ref[:, 1:].tolist(), got):  # drop the start token; transformers pads after EOS
        expected = row[:row.index(eos)] if eos in row else row
        assert tokens == expected
    assert any(len(t) > 3 for t in got)  # not a trivial early stop
