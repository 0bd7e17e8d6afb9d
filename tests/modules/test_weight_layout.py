"""Base linear weights are stored column-major (modules/weight_layout.py): same logical tensors, same outputs
and LoRA gradients as the row-major layout, and every writer still produces the logical [out, in] tensor."""
import pytest
import torch
from torch import nn

from nemo_peft import LoraPEFTConfig, load_pretrained, save_model
from nemo_peft.modules.weight_layout import column_major, is_column_major
from tests.helpers import FAMILIES, IDS, make_model, randomize_adapters


def row_major_twin(model):
    """A deep copy of ``model`` whose every 2-D tensor is row-major again (the layout before this change)."""
    import copy

    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            if p.dim() == 2:
                p.data = p.data.contiguous()
    return twin


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gpt_base_linears_and_tied_head_are_column_major(family):
    model = make_model(family)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(is_column_major(m.weight) for m in linears)
    assert is_column_major(model.output_weight())
    qkv = model.decoder.layers[0].self_attention.linear_qkv
    assert qkv.weight.shape == (qkv.out_features, qkv.in_features)  # the logical shape is unchanged


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_values_and_lora_gradients_equal_the_row_major_layout(family):
    model = make_model(family)
    model.add_adapter(LoraPEFTConfig(dim=4, alpha=8))
    randomize_adapters(model)
    twin = row_major_twin(model)
    assert not is_column_major(twin.decoder.layers[0].mlp.linear_fc1.weight)
    labels = IDS.roll(-1, dims=1)
    outs, grads = [], []
    for m in (model, twin):
        m.train()
        logits = m(IDS)
        loss = m.lm_loss(m(IDS, return_hidden=True), labels)
        loss.backward()
        outs.append(logits.detach())
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6, msg=n)


def test_layout_survives_save_load_dtype_and_merge(tmp_path):
    model = make_model("qwen2")  # untied head: an nn.Linear of its own
    save_model(model, str(tmp_path / "m"))
    loaded, _ = load_pretrained(str(tmp_path / "m"))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert all(is_column_major(m.weight) for m in loaded.modules() if isinstance(m, nn.Linear))
    half = loaded.to(torch.bfloat16)  # bf16 decodes faster from row-major weights: the cast re-chooses
    assert not is_column_major(half.output_weight()) and half.output_weight().is_contiguous()
    # merging a LoRA into a column-major weight (addmm_ into row slices of the fused qkv) is exact enough
    loaded = loaded.float()
    loaded.add_adapter(LoraPEFTConfig(dim=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    randomize_adapters(loaded)
    before = loaded(IDS)
    loaded.merge_adapters()
    torch.testing.assert_close(loaded(IDS), before, rtol=1e-5, atol=1e-5)
    assert is_column_major(loaded.decoder.layers[0].self_attention.linear_qkv.weight)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_loading_holds_the_weights_once(dtype):
    """instantiate relayouts (and casts) the state dict's tensors in place, so the model's parameters are the
    state's tensors: no second copy of the weights is alive while a model loads."""
    from nemo_peft.convert.hf_gpt import fill_rope
    from nemo_peft.convert.instantiate import instantiate
    from nemo_peft.models.gpt import GPTModel
    model = make_model("llama")  # tied head
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}  # the files' row-major layout
    loaded = instantiate(GPTModel, model.config, state, "test", dtype, after_load=fill_rope)
    params = dict(loaded.named_parameters())
    for name, tensor in state.items():
        if name in params:
            assert params[name].data_ptr() == tensor.data_ptr(), name
    layout = is_column_major if dtype is None else (lambda w: w.is_contiguous())  # bf16: row-major
    assert layout(state["embedding.word_embeddings.weight"])
    assert all(layout(m.weight) for m in loaded.modules() if isinstance(m, nn.Linear))
    torch.testing.assert_close(loaded(IDS).float(), model.to(dtype or torch.float32)(IDS).float(), rtol=0.05,
                               atol=0.05)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_casts_choose_the_layout_by_dtype_and_keep_values(family):
    model = make_model(family)
    linears = lambda m: [x.weight for x in m.modules() if isinstance(x, nn.Linear)]
    before = [w.detach().clone() for w in linears(model)]
    model.to(torch.bfloat16)
    assert all(w.is_contiguous() and not is_column_major(w) for w in linears(model))
    model.float()
    assert all(is_column_major(w) for w in linears(model)) and is_column_major(model.output_weight())
    for a, b in zip(before, linears(model)):  # fp32 -> bf16 -> fp32 rounds, the layout changes nothing else
        torch.testing.assert_close(b, a.to(torch.bfloat16).float(), rtol=0, atol=0)


def test_column_major_helper():
    t = torch.arange(6.0).view(2, 3)
    c = column_major(t)
    assert torch.equal(c, t) and c.stride() == (1, 2) and is_column_major(c)
    assert column_major(c) is c
