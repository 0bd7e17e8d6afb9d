"""HF PEFT adapters <-> ours, checked against the real ``peft`` library on tiny random models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from nemo_peft.convert.hf_gpt import load_hf
from nemo_peft import load_adapters, load_hf_peft, save_hf_peft
from nemo_peft.peft.lora import LoraPEFTConfig
from tests.helpers import randomize_adapters

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
T = transformers
TOL = 1e-4
VOCAB = 101
IDS = torch.randint(0, VOCAB, (2, 13), generator=torch.Generator().manual_seed(3))
MAX_DIFFS = {}  # test id -> max |logit diff|, printed with -s


def _llama_cfg(**kw):
    return T.LlamaConfig(**{**dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, bos_token_id=1, eos_token_id=2),
                            **kw})


def _gpt2_cfg(**kw):
    return T.GPT2Config(**{**dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  bos_token_id=1, eos_token_id=2), **kw})


CONFIGS = {"llama": _llama_cfg, "gpt2": _gpt2_cfg}


@pytest.fixture
def base(tmp_path):
    """make(family) -> (HF dir, HF model) of a tiny random model saved with save_pretrained."""
    def make(family, seed=0, **kw):
        torch.manual_seed(seed)
        hf = T.AutoModelForCausalLM.from_config(CONFIGS[family](**kw)).eval()
        path = str(tmp_path / f"{family}-{seed}-{len(kw)}")
        hf.save_pretrained(path)
        return path, hf
    return make


def ours(path):
    return load_hf(path)[0]


def peft_logits(hf_model, adapter_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(hf_model, adapter_dir).eval()
    complaints = [str(w.message) for w in caught if "missing" in str(w.message) or "unexpected" in str(w.message)]
    assert not complaints, complaints  # every key of the file is used and every LoRA module gets its weights
    with torch.no_grad():
        return model(IDS).logits


def check_close(name, a, b):
    diff = (a - b).abs().max().item()
    MAX_DIFFS[name] = diff
    print(f"{name}: max |diff| = {diff:.2e}")
    assert diff <= TOL, f"{name}: max diff {diff}"


def make_peft_adapter(hf_model, out_dir, seed=0, **lora_kw):
    """A peft LoRA with random non-zero A and B, saved with save_pretrained."""
    model = peft.get_peft_model(hf_model, peft.LoraConfig(**lora_kw))
    randomize_adapters(model, seed, std=0.2, marker="lora_")
    model.eval()
    with torch.no_grad():
        expected = model(IDS).logits
    model.save_pretrained(out_dir)
    model.unload()  # give the plain HF model back (peft wraps it in place)
    return expected


# ---------------------------------------------------------------- (a) ours -> HF PEFT

def test_export_llama_partwise_fused_and_mixed_ranks(base, tmp_path):
    path, hf = base("llama")
    model = ours(path)
    model.add_adapter([
        LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=4, alpha=8),  # part-wise on linear_qkv
        LoraPEFTConfig(target_modules=["linear_fc1"], dim=2, alpha=3),  # whole-host fused gate|up
        LoraPEFTConfig(target_modules=["linear_proj"], dim=3, alpha=3, layer_selection=[2]),
    ])
    randomize_adapters(model, std=0.2)
    with torch.no_grad():
        expected = model(IDS)
    out = str(tmp_path / "hf_adapter")
    config = save_hf_peft(model, out, "tiny-llama")
    written = json.load(open(os.path.join(out, "adapter_config.json")))
    assert written == config and written["peft_type"] == "LORA" and written["task_type"] == "CAUSAL_LM"
    assert written["base_model_name_or_path"] == "tiny-llama" and written["r"] == 4
    assert written["rank_pattern"] == {} and written["alpha_pattern"] == {}  # one r / lora_alpha (vLLM)
    assert written["fan_in_fan_out"] is False and written["bias"] == "none"
    assert written["target_modules"] == ["gate_proj", "model.layers.1.self_attn.o_proj", "q_proj", "up_proj",
                                         "v_proj"]
    keys = set(load_file(os.path.join(out, "adapter_model.safetensors")))
    modules = {f"model.layers.{i}.{m}" for i in (0, 1) for m in
               ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")}
    modules.add("model.layers.1.self_attn.o_proj")
    assert keys == {f"base_model.model.{m}.lora_{x}.weight" for m in modules for x in "AB"}
    check_close("export llama q,v + fused fc1 + o (mixed ranks)", peft_logits(hf, out), expected)
    # and back: the exported file loads here to the same outputs
    again = ours(path)
    load_hf_peft(again, out)
    with torch.no_grad():
        check_close("export llama round trip", again(IDS), expected)


def test_export_llama_whole_qkv_rslora(base, tmp_path):
    path, hf = base("llama")
    model = ours(path)
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_qkv", "linear_fc2"], dim=4, alpha=6, use_rslora=True))
    randomize_adapters(model, seed=1, std=0.2)
    with torch.no_grad():
        expected = model(IDS)
    out = str(tmp_path / "hf_adapter")
    config = save_hf_peft(model, out, "tiny-llama")
    assert config["use_rslora"] is True and config["lora_alpha"] == 6
    assert config["target_modules"] == ["down_proj", "k_proj", "q_proj", "v_proj"]
    tensors = load_file(os.path.join(out, "adapter_model.safetensors"))
    qa, ka = (tensors[f"base_model.model.model.layers.0.self_attn.{m}.lora_A.weight"] for m in ("q_proj", "k_proj"))
    assert torch.equal(qa, ka)  # one shared A: q, k and v each get it
    check_close("export llama whole-host qkv + rsLoRA", peft_logits(hf, out), expected)


def test_export_gpt2_fused_c_attn(base, tmp_path):
    path, hf = base("gpt2")
    model = ours(path)
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj"], dim=3, alpha=6), name="qv")
    model.add_adapter(LoraPEFTConfig(target_modules=["linear_proj", "linear_fc1", "linear_fc2"], dim=2, alpha=4),
                      name="rest")
    randomize_adapters(model, seed=2, std=0.2)
    for name in ("qv", "rest"):
        model.set_active_adapters([name])
        with torch.no_grad():
            expected = model(IDS)
        out = str(tmp_path / name)
        config = save_hf_peft(model, out, "tiny-gpt2", name=name)
        assert config["fan_in_fan_out"] is True
        if name == "qv":  # q and v parts of the fused c_attn: one rank-6 LoRA with zero k rows
            assert config["r"] == 6 and config["target_modules"] == ["c_attn"]
            b = load_file(os.path.join(out, "adapter_model.safetensors"))[
                "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
            assert b.shape == (96, 6) and not b[32:64].any()
        else:
            assert config["target_modules"] == ["c_fc", "c_proj"]
        _, fresh_hf = base("gpt2")
        check_close(f"export gpt2 {name}", peft_logits(fresh_hf, out), expected)


# ---------------------------------------------------------------- (b) HF PEFT -> ours

PEFT_CASES = {
    "llama_q_v": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "llama_all_linear": ("llama", dict(r=4, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear")),
    "llama_regex_layer1": ("llama", dict(r=2, lora_alpha=4,
                                         target_modules=r".*layers\.1\.(self_attn\.k_proj|mlp\.\w+_proj)")),
    "llama_rank_alpha_pattern": ("llama", dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "gate_proj", "down_proj"],
        rank_pattern={"q_proj": 6, "model.layers.1.mlp.down_proj": 2}, alpha_pattern={"v_proj": 3, "gate_proj": 5})),
    "llama_rslora": ("llama", dict(r=8, lora_alpha=4, use_rslora=True, rank_pattern={"k_proj": 2},
                                   target_modules=["q_proj", "k_proj", "up_proj", "o_proj"])),
    "gpt2_fan_in_fan_out": ("gpt2", dict(r=4, lora_alpha=8, fan_in_fan_out=True,
                                         target_modules=["c_attn", "c_proj", "c_fc"])),
    "gpt2_attn_c_proj_only": ("gpt2", dict(r=3, lora_alpha=5, fan_in_fan_out=True,
                                           target_modules=["attn.c_proj", "c_attn"])),
}


@pytest.mark.parametrize("case", sorted(PEFT_CASES))
def test_load_peft_adapter(case, base, tmp_path):
    family, lora_kw = PEFT_CASES[case]
    path, hf = base(family)
    out = str(tmp_path / "peft_adapter")
    expected = make_peft_adapter(hf, out, **lora_kw)
    model = ours(path)
    assert load_hf_peft(model, out) == "default"
    with torch.no_grad():
        check_close(f"load peft {case}", model(IDS), expected)
    # written back out, peft reads the same outputs again
    back = str(tmp_path / "back")
    save_hf_peft(model, back, "tiny")
    check_close(f"load peft {case} re-export", peft_logits(hf, back), expected)


def test_load_adapters_dispatches_and_fills_existing_adapter(base, tmp_path):
    path, hf = base("llama")
    out = str(tmp_path / "peft_adapter")
    expected = make_peft_adapter(hf, out, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    model = ours(path)
    assert load_adapters(model, out) == ["default"]
    with torch.no_grad():
        check_close("load_adapters dispatch", model(IDS), expected)
    # an adapter already built by the recipe (bigger rank) is filled in place, exactly
    model = ours(path)
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "v_proj", "linear_fc2"], dim=8, alpha=8), "task")
    assert load_adapters(model, out, name="task") == ["task"]
    with torch.no_grad():
        check_close("load into existing adapter", model(IDS), expected)
    # our native checkpoint of it round-trips
    native = str(tmp_path / "native")
    model.save_adapters(native)
    again = ours(path)
    again.load_adapters(native)
    with torch.no_grad():
        assert torch.equal(again(IDS), model(IDS))


def test_cli_round_trip(base, tmp_path):
    path, hf = base("llama")
    model = ours(path)
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj", "k_proj", "linear_fc1"], dim=4, alpha=8))
    randomize_adapters(model, seed=5, std=0.2)
    with torch.no_grad():
        expected = model(IDS)
    native, hf_dir, back = (str(tmp_path / n) for n in ("native", "hf_peft", "back"))
    model.save_adapters(native)
    script = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "export.py")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))}
    for args in (["--to-hf-peft", "--adapter", native, "--output", hf_dir, "--base-model-name", "org/tiny"],
                 ["--from-hf-peft", "--adapter", hf_dir, "--output", back]):
        subprocess.run([sys.executable, script, "--base-model", path, *args], check=True, env=env,
                       capture_output=True, text=True)
    assert json.load(open(os.path.join(hf_dir, "adapter_config.json")))["base_model_name_or_path"] == "org/tiny"
    check_close("cli to-hf-peft", peft_logits(hf, hf_dir), expected)
    again = ours(path)
    again.load_adapters(back)
    with torch.no_grad():
        check_close("cli from-hf-peft", again(IDS), expected)


# ---------------------------------------------------------------- (c) errors

def test_shape_mismatch_names_module_and_shapes(base, tmp_path):
    _, hf = base("llama", intermediate_size=64)
    out = str(tmp_path / "peft_adapter")
    make_peft_adapter(hf, out, r=4, lora_alpha=8, target_modules=["down_proj"])
    path, _ = base("llama", seed=1)  # intermediate_size 80
    with pytest.raises(ValueError, match=r"model\.layers\.\d\.mlp\.down_proj.*\(4, 64\).*\[r, 80\]"):
        load_hf_peft(ours(path), out)


def test_dora_is_rejected(base, tmp_path):
    path, hf = base("llama")
    out = str(tmp_path / "dora")
    make_peft_adapter(hf, out, r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(ValueError, match="use_dora"):
        load_hf_peft(ours(path), out)


@pytest.mark.parametrize("field,value", [("bias", "all"), ("modules_to_save", ["lm_head"]), ("peft_type", "IA3"),
                                         ("init_lora_weights", "pissa")])
def test_unsupported_config_fields(field, value, base, tmp_path):
    path, hf = base("llama")
    out = str(tmp_path / "peft_adapter")
    make_peft_adapter(hf, out, r=2, lora_alpha=2, target_modules=["q_proj"])
    cfg_path = os.path.join(out, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg[field] = value
    json.dump(cfg, open(cfg_path, "w"))
    model = ours(path)
    with pytest.raises(ValueError, match=field):
        load_adapters(model, out)
    assert model.adapter_names == []  # nothing half-added


def test_missing_files(base, tmp_path):
    path, hf = base("llama")
    model = ours(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_peft(model, str(tmp_path / "nope"))
    out = str(tmp_path / "peft_adapter")
    make_peft_adapter(hf, out, r=2, lora_alpha=2, target_modules=["q_proj"])
    os.remove(os.path.join(out, "adapter_model.safetensors"))
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapters(model, out)


def test_existing_adapter_that_does_not_fit(base, tmp_path):
    path, hf = base("llama")
    out = str(tmp_path / "peft_adapter")
    make_peft_adapter(hf, out, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    model = ours(path)
    model.add_adapter(LoraPEFTConfig(target_modules=["q_proj"], dim=8, alpha=8))
    with pytest.raises(ValueError, match="does not fit|slices"):
        load_hf_peft(model, out)
