"""A new PEFT method is one file plus one YAML.

The scalar gate below (h -> h + g * h after attention and after the MLP, one learnable g per
slot, g = 0 at init) is defined here, registered, and then used with no other file edited:
through ``model.add_adapter`` and through Hydra's ``model.peft.peft_scheme``.
"""
import json
import os
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from torch import nn

from nemo_peft.core.registry import METHODS
from nemo_peft.core.slots import SlotContext
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.peft.base import PEFTConfig, register
from nemo_peft.peft.schemes import configs_from_peft_section
from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")

# what would be conf/peft/scale_gate.yaml
GATE_YAML = """\
# Scalar gates: h -> h + g * h after attention and after the MLP (g = 0: the model is unchanged).
peft_scheme: scale_gate
restore_from_path: null    # an adapter directory to start from
scale_gate_tuning:
  target_modules: [adapter_post_attn, adapter_post_mlp]
  init: 0.0
"""


@pytest.fixture
def scale_gate():
    """What would be nemo_peft/peft/scale_gate.py; unregistered again afterwards."""

    class ScalarGate(nn.Module):
        def __init__(self, init: float):
            super().__init__()
            self.gate = nn.Parameter(torch.full((1,), float(init)))

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return h + self.gate * h

    @register("scale_gate", section="scale_gate_tuning")
    @dataclass
    class ScaleGatePEFTConfig(PEFTConfig):
        target_modules: list[str] = field(default_factory=lambda: ["adapter_post_attn", "adapter_post_mlp"])
        init: float = 0.0

        def build_adapters(self, slots: list[SlotContext]):
            return {ctx.key: ScalarGate(self.init) for ctx in slots
                    if ctx.spec.kind == "residual" and ctx.spec.name in self.target_modules}

    try:
        yield ScaleGatePEFTConfig
    finally:
        METHODS.pop("scale_gate", None)


def tiny_gpt() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=61, hidden_size=32, num_layers=2, num_attention_heads=4,
                              num_query_groups=2, ffn_hidden_size=64)).eval()


def test_new_method_trains_saves_and_loads_through_add_adapter(scale_gate, tmp_path):
    ids = torch.randint(0, 61, (4, 16), generator=torch.Generator().manual_seed(0))
    model = tiny_gpt()
    base = model(ids)
    model.add_adapter(scale_gate())
    assert torch.equal(model(ids), base)  # g = 0
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 and all(n.endswith(".gate") for n in trainable), trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(15):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # only the gates trained

    model.save_adapters(str(tmp_path))
    saved = json.load(open(tmp_path / "adapter_config.json"))["adapters"]["default"]
    assert saved == [{"method": "scale_gate", "target_modules": ["adapter_post_attn", "adapter_post_mlp"],
                      "init": 0.0}]
    fresh = tiny_gpt()
    fresh.load_adapters(str(tmp_path))
    assert torch.equal(fresh(ids), model(ids))
    assert not torch.equal(fresh(ids), base)


def test_registered_method_without_yaml_builds_from_defaults(scale_gate):
    assert configs_from_peft_section({"peft_scheme": "scale_gate"}) == [scale_gate()]
    cfgs = configs_from_peft_section({"peft_scheme": "ia3,scale_gate", "scale_gate_tuning": {"init": 0.5}})
    assert [c.method for c in cfgs] == ["ia3", "scale_gate"] and cfgs[1].init == 0.5


def compose_finetune(overrides: list[str]):
    """What examples/finetune.py does: rewrite argv the same way, then compose conf/finetune.yaml."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("finetune", overrides=peft_scheme_args(overrides))


def test_new_method_trains_through_hydra_peft_scheme(scale_gate, tmp_path):
    from nemo_peft.recipes.finetune import run_finetune

    (tmp_path / "conf" / "peft").mkdir(parents=True)
    (tmp_path / "conf" / "peft" / "scale_gate.yaml").write_text(GATE_YAML)
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"input": f"x: {w} =>", "output": w}) + "\n"
                             for w in ("abc", "bcd", "cab", "dda") * 4))

    # combined with a built-in method, as users type it: both sections are there to override
    cfg = compose_finetune([search, "model=tiny", "model.peft.peft_scheme=scale_gate,ia3",
                            "model.peft.scale_gate_tuning.init=0.25"])
    assert cfg.model.peft.peft_scheme == "scale_gate,ia3"
    assert {"scale_gate_tuning", "ia3_tuning"} <= set(cfg.model.peft)
    assert [c.method for c in configs_from_peft_section(cfg.model.peft)] == ["scale_gate", "ia3"]
    assert cfg.model.peft.scale_gate_tuning.init == 0.25
    cfg = compose_finetune([search, "model=tiny", "peft@model.peft=scale_gate"])  # the group option, too
    assert cfg.model.peft.peft_scheme == "scale_gate" and cfg.model.peft.scale_gate_tuning.init == 0.0

    out = tmp_path / "run"
    cfg = compose_finetune([
        search, "model=tiny", "model.peft.peft_scheme=scale_gate", f"exp_manager.output_dir={out}",
        "trainer.max_steps=3", "trainer.enable_progress_bar=false", "exp_manager.checkpoint=null",
        "eval_before=false", "model.eval_exact_match=false", "model.optim.lr=5e-2",
        f"data.train_ds.file_names=[{train}]", "data.validation_ds=null", "data.test_ds=null",
    ])
    result = run_finetune(cfg)
    trainable = [n for n, p in result["module"].model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".gate") for n in trainable), trainable
    saved = json.load(open(out / "adapter" / "adapter_config.json"))["adapters"]["default"]
    assert [c["method"] for c in saved] == ["scale_gate"]
    tensors = load_file(str(out / "adapter" / "adapter_weights.safetensors"))
    assert len(tensors) == len(trainable) and all(k.endswith(".gate") for k in tensors), list(tensors)
    assert any(t.abs().item() > 0 for t in tensors.values())  # trained away from g = 0
