"""Property tests of target matching (nemo_peft/peft/targets.py) against the module paths of real
tiny models (Llama-, GPT-2- and T5-style): exact paths, paths with a part, wildcards and regexes
built from paths, and Hugging Face part names."""
from __future__ import annotations

import re

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nemo_peft.core.slots import host_parts
from nemo_peft.models.gpt import GPTConfig, GPTModel
from nemo_peft.peft import LoraPEFTConfig
from nemo_peft.peft.targets import select_parts
from tests.peft.test_matrix import build

SETTINGS = settings(max_examples=25, deadline=None, database=None)
# every LoRA host of each model: (host path, host name, parts)
HOSTS = {arch: [(c.host_path, c.spec.host, host_parts(c.block, c.spec.host))
                for c in build(arch).slot_contexts() if c.spec.kind == "lora"]
         for arch in ("llama", "gpt2", "t5v1_1")}
ALL_HOSTS = [(arch, h) for arch, hosts in HOSTS.items() for h in hosts]
LAYER = re.compile(r"layers\.(\d+)\.")


def selected(target: str, arch: str) -> dict[str, set[str]]:
    """host path -> the parts ``target`` selects there, for every host it matches in ``arch``."""
    out = {}
    for path, host, parts in HOSTS[arch]:
        sel = select_parts(target, host, path, parts)
        if sel:
            out[path] = sel
    return out


@SETTINGS
@given(st.sampled_from(ALL_HOSTS))
def test_a_module_path_selects_exactly_its_own_host(arch_host):
    arch, (path, _, _) = arch_host
    assert selected(path, arch) == {path: {"all"}}
    assert selected(re.escape(path), arch) == {path: {"all"}}  # the same path as a regex


@SETTINGS
@given(st.sampled_from([(a, h, p) for a, h in ALL_HOSTS for p in h[2] if p != "all"]))
def test_a_path_with_a_part_selects_exactly_that_part(arch_host_part):
    arch, (path, _, _), part = arch_host_part
    assert selected(f"{path}.{part}", arch) == {path: {part}}


@SETTINGS
@given(st.sampled_from(ALL_HOSTS), st.sampled_from(["*", "?", r"\d+", "[0-9]"]))
def test_a_layer_number_replaced_by_a_wildcard_matches_that_layer_in_every_layer(arch_host, wild):
    arch, (path, _, _) = arch_host
    if wild in ("*", "?"):
        target = LAYER.sub(f"layers.{wild}.", path)
    else:  # a regex: the rest of the path escaped
        target = r"\.".join(wild if p.isdigit() else re.escape(p) for p in path.split("."))
    same_host_any_layer = {p for p, _, _ in HOSTS[arch] if LAYER.sub("layers.N.", p) == LAYER.sub("layers.N.", path)}
    got = selected(target, arch)
    assert path in got and set(got) == same_host_any_layer
    assert all(parts == {"all"} for parts in got.values())


@SETTINGS
@given(st.sampled_from(sorted(HOSTS)), st.sampled_from(["q", "k", "v"]))
def test_a_part_wildcard_selects_that_part_of_every_fused_attention(arch, part):
    got = selected(f"*.linear_qkv.{part}", arch)
    expect = {p for p, host, _ in HOSTS[arch] if host == "linear_qkv"}
    assert set(got) == expect and all(sel == {part} for sel in got.values())


@st.composite
def gpt_configs(draw):
    groups = draw(st.sampled_from([1, 2]))
    heads = groups * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4]))
    return GPTConfig(vocab_size=31, hidden_size=heads * head_dim, num_layers=draw(st.integers(1, 3)),
                     num_attention_heads=heads, num_query_groups=groups, ffn_hidden_size=8,
                     gated_linear_unit=draw(st.booleans()))


@settings(max_examples=15, deadline=None, database=None)
@given(gpt_configs(), st.sets(st.sampled_from(["q_proj", "k_proj", "v_proj"]), min_size=1))
def test_hf_attention_names_adapt_exactly_those_parts(cfg, names):
    """q_proj + v_proj on a fused QKV: one A_p/B_p per chosen part, covering exactly its rows."""
    torch.manual_seed(0)
    model = GPTModel(cfg)
    model.add_adapter(LoraPEFTConfig(target_modules=sorted(names), dim=2))
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_query_groups * cfg.head_dim
    rows = {"q_proj": (0, q), "k_proj": (q, kv), "v_proj": (q + kv, kv)}
    expect = sorted(rows[n] for n in names)
    adapted = {p: s for p, s in model.adapter_slots_by_path().items() if s.adapters}
    assert sorted(adapted) == [f"decoder.layers.{i}.self_attention.lora_qkv" for i in range(cfg.num_layers)]
    for slot in adapted.values():
        adapter = slot.adapters["default"]
        assert adapter.out_slices == expect
        assert adapter.lora_a.shape[0] == 2 * len(names)  # each part its own rank-2 A
