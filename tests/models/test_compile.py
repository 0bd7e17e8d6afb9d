"""model.compile: the compiled blocks train to the eager values and keep the adapter names."""
import contextlib

import pytest
import torch
from torch._dynamo.utils import counters

from nemo_peft.models.compile import compile_blocks
from nemo_peft.models.generation import SamplingParams, generate
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.models.seq2seq_generation import generate_seq2seq
from nemo_peft.models.t5 import T5Config, T5Model
from nemo_peft.peft.bottleneck import BottleneckAdapterPEFTConfig
from nemo_peft.peft.dora import DoraPEFTConfig
from nemo_peft.peft.ia3 import IA3PEFTConfig
from nemo_peft.peft.lora import LoraPEFTConfig
from nemo_peft.peft.prefix import PrefixTuningPEFTConfig

METHODS = {  # the block-level methods model.compile=true compiles (prompt embeddings sit outside the blocks)
    "lora": lambda: LoraPEFTConfig(target_modules=["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
                                   dim=4, lora_B_init_method="normal"),
    "lora_q_v": lambda: LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=4, lora_B_init_method="normal"),
    "dora": lambda: DoraPEFTConfig(dim=4),
    "ia3": IA3PEFTConfig,
    "adapter": BottleneckAdapterPEFTConfig,
    "prefix": PrefixTuningPEFTConfig,
}


def adapted_model(method="lora"):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(num_layers=2, num_attention_heads=4, num_query_groups=2))
    model.add_adapter(METHODS[method]())
    return model


def precision(name):
    """fp32, or bf16 autocast as ``trainer.precision=bf16-mixed`` runs a step (here on the CPU)."""
    return torch.autocast("cpu", torch.bfloat16) if name == "bf16-mixed" else contextlib.nullcontext()


def loss_and_grads(model, ids, labels, mode="fp32"):
    model.zero_grad(set_to_none=True)
    with precision(mode):
        loss = model.lm_loss(model(ids, return_hidden=True), labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def block_inputs(model, ids):
    """The positional inputs the first transformer block gets in an eager forward of ``ids``."""
    got = []
    handle = model.fsdp_units()[0].register_forward_pre_hook(lambda _, args: got.append(args))
    with torch.no_grad():
        model(ids, return_hidden=True)
    handle.remove()
    return got[0]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("mode", ["fp32", "bf16-mixed"])
def test_a_block_with_adapters_traces_as_one_graph(mode, method):
    """A graph break inside a block (LoRA's ``_is_view`` check) made the graph after it update its input in
    place, which crashed torch.compile's view replay (garbage shapes, segfaults); dynamo's trace, no compiling."""
    model = adapted_model(method)
    x, *rest = block_inputs(model, torch.randint(0, 256, (2, 12)))
    torch._dynamo.reset()
    with precision(mode):
        explained = torch._dynamo.explain(model.fsdp_units()[0])(x.requires_grad_(), *rest)
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "bf16-mixed"])
def test_compiled_blocks_match_eager_values_and_gradients(mode):
    ids, labels = torch.randint(0, 256, (2, 12)), torch.randint(0, 256, (2, 12))
    eager, compiled = adapted_model(), adapted_model()
    names = set(compiled.adapter_state_dict())
    compile_blocks(compiled)
    (l0, g0), (l1, g1) = loss_and_grads(eager, ids, labels, mode), loss_and_grads(compiled, ids, labels, mode)
    tol = dict(rtol=1e-5, atol=1e-5) if mode == "fp32" else dict(rtol=2e-2, atol=2e-2)  # bf16 sums reorder
    torch.testing.assert_close(l1, l0, **tol)
    assert g0.keys() == g1.keys()  # parameter names unchanged by compiling in place
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], **(dict(rtol=1e-4, atol=1e-5) if mode == "fp32" else tol))
    assert set(compiled.adapter_state_dict()) == names


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler.*model.compile=false"):
        compile_blocks(adapted_model())


def t5_model():
    torch.manual_seed(0)
    return T5Model(T5Config(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                            relative_attention_num_buckets=8, relative_attention_max_distance=16,
                            decoder_start_token_id=0))


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_generation_runs_compiled_blocks_eagerly(arch):
    """Each layer's KV-cache index and the cache length are guards: compiled blocks recompiled per layer and
    per token during generation (dynamo's recompile limit after minutes of compiling). Generation runs
    them eagerly: the same tokens as the uncompiled model, and no graph compiled."""
    model = (adapted_model() if arch == "gpt" else t5_model()).eval()
    run = generate if arch == "gpt" else generate_seq2seq
    ids, params = torch.randint(1, 97, (3, 7)), SamplingParams(max_new_tokens=5, greedy=True)
    with torch.no_grad():
        ref = run(model, ids, params=params)
        compile_blocks(model)
        torch._dynamo.reset()
        counters.clear()
        got = run(model, ids, params=params)
    assert got == ref
    assert counters["stats"]["unique_graphs"] == 0, dict(counters["stats"])
