"""The generic PEFT test matrix, run for a GPT-style model and for T5-style models.

For every method (and two combinations): only its parameters get gradients, the output is
unchanged at initialisation where the method defines that, save -> load into a fresh model
gives identical logits, it learns a small task, and merge == unmerged (where defined).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemo_peft.models.t5 import T5Config, T5Model
from nemo_peft.peft import (CanonicalAdaptersPEFTConfig, DoraPEFTConfig, IA3PEFTConfig, LoraPEFTConfig,
                            PrefixTuningPEFTConfig, PromptTuningPEFTConfig, PtuningPEFTConfig, QLoraPEFTConfig)
from tests.helpers import assert_only_adapters_get_grads, peaky_model, randomize_adapters

VOCAB = 97
G = torch.Generator().manual_seed(11)
ENC = torch.randint(0, VOCAB, (4, 10), generator=G)
DEC = torch.randint(0, VOCAB, (4, 7), generator=G)
MASK = torch.ones_like(ENC)
MASK[1, 7:] = 0  # one padded encoder row
T5_ARCHS = {
    "t5": dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=16),
    "t5v1_1": dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=3,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
ARCHS = ["llama", *T5_ARCHS]

METHODS = {
    "lora": lambda: LoraPEFTConfig(target_modules=["all"], dim=4, alpha=8),
    "lora_hf_names": lambda: LoraPEFTConfig(target_modules=["q", "v", "wo", "o"], dim=2, alpha=4),
    "dora": lambda: DoraPEFTConfig(target_modules=["all"], dim=4, alpha=8),
    "qlora": lambda: QLoraPEFTConfig(target_modules=["all"], dim=4, alpha=8, block_size=16),
    "ia3": lambda: IA3PEFTConfig(),
    "adapter": lambda: CanonicalAdaptersPEFTConfig(adapter_dim=4),
    "ptuning": lambda: PtuningPEFTConfig(virtual_tokens=3, bottleneck_dim=8, embedding_dim=8),
    "prompt_tuning": lambda: PromptTuningPEFTConfig(virtual_tokens=3, init_std=0.5),
    "prefix_tuning": lambda: PrefixTuningPEFTConfig(num_virtual_tokens=3),
    "ptuning+adapter": lambda: [PtuningPEFTConfig(virtual_tokens=3, bottleneck_dim=8, embedding_dim=8),
                                CanonicalAdaptersPEFTConfig(adapter_dim=4)],
    "lora+ia3": lambda: [LoraPEFTConfig(target_modules=["all"], dim=2, alpha=4), IA3PEFTConfig()],
}
# methods that leave the model's output unchanged when added (B = 0, scales = 1, zero-init up-projection)
INIT_IDENTITY = {"lora", "lora_hf_names", "dora", "ia3", "adapter", "lora+ia3"}
MERGEABLE = {"lora", "lora_hf_names", "dora", "ia3", "lora+ia3"}


def build(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch in T5_ARCHS:
        return T5Model(T5Config(**T5_ARCHS[arch])).eval()
    return peaky_model(arch, seed)  # GPTModel's 0.02-std init gives near-uniform logits that barely move in 20 steps


def logits(model):
    """[B, T, V] over the real (not virtual) positions."""
    if isinstance(model, T5Model):
        return model(ENC, MASK, DEC)
    return model(ENC)[:, -ENC.shape[1]:]


ANSWER = torch.tensor([5, 6, 7, 8])  # a fixed answer to any input: every method can learn it


def loss(model):
    """Cross-entropy of the answer: the decoder's labels (T5, teacher-forced), or the tokens after
    position 3 of the input (GPT, next-token prediction)."""
    n = len(ANSWER)
    if isinstance(model, T5Model):
        dec = torch.cat([torch.zeros(len(ENC), 1, dtype=torch.long), ANSWER[:-1].expand(len(ENC), -1)], 1)
        out = model(ENC, MASK, dec)
    else:
        ids = ENC.clone()
        ids[:, 4:4 + n] = ANSWER
        out = model(ids)[:, -ids.shape[1]:][:, 3:3 + n]
    return F.cross_entropy(out.flatten(0, 1), ANSWER.repeat(len(ENC)))


def randomize(model, seed=1):
    """Move every adapter away from its (often identity) init, so tests see its effect."""
    randomize_adapters(model, seed, add=True)


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.mark.parametrize("method", sorted(METHODS))
def test_only_adapter_parameters_get_gradients(arch, method):
    model = build(arch).train()
    model.add_adapter(METHODS[method]())
    assert model.num_trainable_parameters() > 0
    randomize(model)  # B = 0 would leave A without a gradient
    loss(model).backward()
    assert_only_adapters_get_grads(model)


@pytest.mark.parametrize("method", sorted(INIT_IDENTITY))
def test_output_unchanged_at_init(arch, method):
    model = build(arch)
    before = logits(model)
    model.add_adapter(METHODS[method]())
    # exact for GPT; T5's k/v go to attention as contiguous copies once a slot touches them, which
    # changes SDPA's summation order (~1e-7 relative)
    torch.testing.assert_close(logits(model), before, rtol=0, atol=1e-6 * before.abs().max().item())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_save_load_into_fresh_model_gives_identical_logits(tmp_path, arch, method):
    model = build(arch)
    model.add_adapter(METHODS[method]())
    randomize(model)
    expected = logits(model)
    model.save_adapters(str(tmp_path / "ad"))
    fresh = build(arch)  # same seed: same base
    fresh.load_adapters(str(tmp_path / "ad"))
    assert torch.equal(logits(fresh.eval()), expected)
    if method not in ("ptuning", "prompt_tuning", "prefix_tuning", "ptuning+adapter"):
        assert (expected - logits(build(arch))).abs().max() > 1e-4  # the adapter did change the output


@pytest.mark.parametrize("method", sorted(METHODS))
def test_learns(arch, method):
    model = build(arch).train()
    model.add_adapter(METHODS[method]())
    lr = 0.2 if method == "prompt_tuning" else 5e-2  # a soft prompt must move on the embeddings' scale (T5: std 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(30):
        value = loss(model)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.75 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("method", sorted(MERGEABLE))
def test_merge_equals_unmerged_and_unmerge_restores(arch, method):
    model = build(arch)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter(METHODS[method]())
    randomize(model)
    unmerged = logits(model)
    model.merge_adapters()
    # 1e-5 of the logits' scale (T5 v1.1's unscaled untied head gives logits ~25)
    torch.testing.assert_close(logits(model), unmerged, rtol=0, atol=1e-5 * max(1.0, unmerged.abs().max().item()))
    model.unmerge_adapters()
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("t5_arch", sorted(T5_ARCHS))
def test_t5_trainable_counts_match_closed_form(t5_arch):
    c = T5Config(**T5_ARCHS[t5_arch])
    d, inner, ff, r = c.d_model, c.num_heads * c.d_kv, c.d_ff, 4
    fc1_out = 2 * ff if c.gated else ff
    lora = lambda n_in, n_out: r * (n_in + n_out)  # noqa: E731
    # every host: self-attention qkv + proj and the MLP in both stacks; cross-attention q, kv, proj in the decoder
    per_layer = lora(d, 3 * inner) + lora(inner, d) + lora(d, fc1_out) + lora(ff, d)
    cross = lora(d, inner) + lora(d, 2 * inner) + lora(inner, d)
    model = build(t5_arch)
    model.add_adapter(LoraPEFTConfig(target_modules=["all"], dim=r))
    assert model.num_trainable_parameters() == (c.num_layers + c.num_decoder_layers) * per_layer \
        + c.num_decoder_layers * cross
    # IA3: keys and values of every attention (self and cross) and the MLP activation
    model = build(t5_arch)
    model.add_adapter(IA3PEFTConfig(target_modules=["k", "v", "wo"]))
    assert model.num_trainable_parameters() == c.num_layers * (2 * inner + ff) \
        + c.num_decoder_layers * (4 * inner + ff)
    # canonical adapters: two bottlenecks (down + up, no biases, as NeMo; a LayerNorm in front) per layer
    model = build(t5_arch)
    model.add_adapter(CanonicalAdaptersPEFTConfig(adapter_dim=r))
    per_adapter = d * r + r * d + 2 * d
    assert model.num_trainable_parameters() == (c.num_layers + c.num_decoder_layers) * 2 * per_adapter


def test_mixed_batch_routing_equals_each_row_alone(arch):
    model = build(arch)
    model.add_adapter(METHODS["lora"](), name="a")
    model.add_adapter([LoraPEFTConfig(target_modules=["all"], dim=2, alpha=4), IA3PEFTConfig()], name="b")
    model.add_adapter(CanonicalAdaptersPEFTConfig(adapter_dim=3), name="c")
    randomize(model)
    names = ["a", None, "b", "c"]
    with model.route(names):
        mixed = logits(model)
    for row, name in enumerate(names):
        if name is None:
            with model.disable_adapters():
                alone = logits(model)
        else:
            model.set_active_adapters([name])
            alone = logits(model)
        torch.testing.assert_close(mixed[row], alone[row], rtol=1e-5, atol=1e-5 * alone.abs().max().item())
