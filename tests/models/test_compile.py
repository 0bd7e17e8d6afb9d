"""model.compile: the compiled blocks train to the eager values and keep the adapter names."""
import pytest
import torch

from nemo_peft.models.compile import compile_blocks
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.peft.lora import LoraPEFTConfig


def lora_model():
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(num_layers=2, num_attention_heads=4, num_query_groups=2))
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
                                     dim=4, lora_B_init_method="normal"))
    return model


def loss_and_grads(model, ids, labels):
    model.zero_grad(set_to_none=True)
    loss = model.lm_loss(model(ids, return_hidden=True), labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_compiled_blocks_match_eager_values_and_gradients():
    ids, labels = torch.randint(0, 256, (2, 12)), torch.randint(0, 256, (2, 12))
    eager, compiled = lora_model(), lora_model()
    names = set(compiled.adapter_state_dict())
    compile_blocks(compiled)
    (l0, g0), (l1, g1) = loss_and_grads(eager, ids, labels), loss_and_grads(compiled, ids, labels)
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert g0.keys() == g1.keys()  # parameter names unchanged by compiling in place
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-5)
    assert set(compiled.adapter_state_dict()) == names


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*model.compile=false"):
        compile_blocks(lora_model())
