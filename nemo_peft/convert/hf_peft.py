"""LoRA adapters <-> Hugging Face PEFT adapter directories (``adapter_config.json`` +
``adapter_model.safetensors``), as ``peft.PeftModel.from_pretrained`` and vLLM read them.

Our hosts are fused ([q | k | v] in ``linear_qkv``, [gate | up] in gated ``linear_fc1``); HF
Llama-style models keep separate q/k/v/gate/up projections, GPT-2 a fused ``c_attn``. Every
conversion here is exact:

- export: each HF module gets A = the stacked A_p of the adapter parts that reach its rows and
  B = their B_p rows placed block-wise (a whole-host adapter gives q, k and v the same A; a
  part-wise q+v adapter on GPT-2's fused ``c_attn`` becomes one rank-2r LoRA with zero k rows).
  All modules are then zero-padded to one rank and scale differences are folded into B, so the
  file needs one ``r``/``lora_alpha`` and no ``rank_pattern``/``alpha_pattern`` (vLLM ignores those).
- import: the q/k/v (gate/up) LoRAs of a layer become one part-wise adapter; different ranks are
  zero-padded, different scales (``alpha_pattern``, rsLoRA) are folded into B.

Both directions work from the model family's ``HFPeftSpec`` (``hf_peft_layout.py``): for each of
our host linears, the HF modules that make it up and the rows each one holds. Each family's
converter provides one (``hf_gpt_peft.GPT_PEFT_SPEC``, ``hf_t5.T5_PEFT_SPEC``); callers pass it
in (``nemo_peft.save_hf_peft`` / ``load_hf_peft`` look it up from the model's family).
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter, defaultdict

import torch
from safetensors.torch import save_file

from nemo_peft.convert.hf_peft_layout import HFPeftSpec
from nemo_peft.convert.hf_peft_file import (CONFIG_NAME, FINGERPRINT_NAME, PREFIX, WEIGHTS_NAME, check_config,
                                            parse_lora_tensors, read_fingerprint, read_hf_peft)
from nemo_peft.core.adapter_io import atomic_write
from nemo_peft.core.fingerprint import base_fingerprint, check_base
from nemo_peft.core.slots import host_parts
from nemo_peft.peft.lora import LoraAdapter, LoraPEFTConfig



def _layer_of(path: str) -> int:
    return int(re.search(r"(?:^|\.)layers\.(\d+)\.", path + ".").group(1))


def _lora_entries(model, name: str):
    """(path, block, host, adapter) for every slot holding adapter ``name``."""
    if name not in model.adapter_names:
        raise ValueError(f"This model has no adapter named {name!r}; it has {model.adapter_names}.")
    for path, slot in model.adapter_slots_by_path().items():
        if name in slot.adapters:
            adapter = slot.adapters[name]
            # DoRA subclasses LoRA but its magnitudes have no place in this plain-LoRA export.
            if not isinstance(adapter, LoraAdapter) or hasattr(adapter, "magnitude"):
                raise ValueError(f"Adapter {name!r} at {path} is {type(adapter).__name__}; only LoRA adapters can "
                                 "be written in the Hugging Face PEFT format.")
            yield path, model.get_submodule(path.rsplit(".", 1)[0]), slot.spec.host, adapter


# ---------------------------------------------------------------- export

def save_hf_peft(model, spec: HFPeftSpec, directory: str, base_model_name_or_path: str, name: str = "default",
                 model_type: str | None = None) -> dict:
    """Write adapter ``name`` of ``model`` as an HF PEFT LoRA adapter directory; returns the config written.

    ``spec`` is the model family's HF layout; ``model_type`` (e.g. "llama", "gpt2", "t5") picks the HF
    module names, by default the family the model was loaded from. The file holds only LoRA A/B weights
    (no embeddings, lm_head or biases), one ``r`` and one ``lora_alpha``, as both peft and vLLM load it.
    """
    model_type = model_type or spec.default_model_type(model)
    if model_type not in spec.model_types:
        raise ValueError(f"Cannot name modules for model_type {model_type!r}; supported: "
                         f"{', '.join(spec.model_types)}.")
    layout = spec.layout(model, model_type)
    modules = []  # (HF module path, A [r, in], B [out, r], scale)
    rslora = set()
    for path, block, host, adapter in _lora_entries(model, name):
        rslora.add(adapter.use_rslora)
        for hf_path, t_start, t_size in layout[f"{path.rsplit('.', 1)[0]}.{host}"]:
            a_blocks, b_cols = [], []
            for _, start, size, a, b in adapter.parts():
                lo, hi = max(start, t_start), min(start + size, t_start + t_size)
                if lo < hi:  # this part of the adapter reaches rows of this HF module
                    col = torch.zeros(t_size, adapter.dim)
                    col[lo - t_start:hi - t_start] = b[lo - start:hi - start].detach().float().cpu()
                    a_blocks.append(a.detach().float().cpu())
                    b_cols.append(col)
            if a_blocks:
                modules.append((hf_path, torch.cat(a_blocks), torch.cat(b_cols, dim=1), adapter.scale))
    if not modules:
        raise ValueError(f"Adapter {name!r} holds no LoRA weights to export.")
    use_rslora = rslora == {True}
    r = max(a.shape[0] for _, a, _, _ in modules)
    scale = Counter(s for *_, s in modules).most_common(1)[0][0]
    alpha = scale * (math.sqrt(r) if use_rslora else r)
    alpha = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 * max(1.0, abs(alpha)) else alpha
    scale = alpha / (math.sqrt(r) if use_rslora else r)  # what peft/vLLM will compute from the file
    dtype = next(iter(model.adapter_state_dict(name).values())).dtype
    tensors = {}
    for hf_path, a, b, s in modules:
        pad = r - a.shape[0]
        a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
        b = torch.cat([b * (s / scale) if s != scale else b, b.new_zeros(b.shape[0], pad)], dim=1)
        tensors[f"{PREFIX}{hf_path}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{PREFIX}{hf_path}.lora_B.weight"] = b.to(dtype).contiguous()
    configs = model.adapter_configs(name)
    config = {
        "peft_type": "LORA", "task_type": spec.task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r, "lora_alpha": alpha, "use_rslora": use_rslora,
        "lora_dropout": max((getattr(c, "dropout", 0.0) for c in configs), default=0.0),
        "target_modules": _target_modules(layout, [m[0] for m in modules]),
        "fan_in_fan_out": model_type in spec.conv1d_model_types, "bias": "none", "use_dora": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "layers_pattern": None, "revision": None,
    }
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, WEIGHTS_NAME),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def write_json(data):
        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)
        return write
    # peft warns about unknown keys in adapter_config.json, so the base fingerprint has its own file
    atomic_write(os.path.join(directory, FINGERPRINT_NAME), write_json(model.base_fingerprints([name])[name]))
    atomic_write(os.path.join(directory, CONFIG_NAME), write_json(config))
    return config


def _target_modules(layout: dict, written: list[str]) -> list[str]:
    """Short names (``q_proj``) where they select exactly the written modules, else full paths."""
    existing = [hf_path for modules in layout.values() for hf_path, _, _ in modules]
    written_set, out = set(written), []
    for short in sorted({p.rsplit(".", 1)[1] for p in written}):
        selected = {p for p in existing if p.rsplit(".", 1)[1] == short}
        if selected <= written_set:
            out.append(short)
        else:
            out += sorted(selected & written_set)
    return out


# ---------------------------------------------------------------- import

def load_hf_peft(model, spec: HFPeftSpec, directory: str, name: str = "default", strict_base: bool = True) -> str:
    """Load an HF PEFT LoRA adapter directory into ``model`` (laid out as ``spec`` says) as adapter
    ``name``, exactly.

    The q/k/v (gate/up) LoRAs of a layer become one part-wise adapter on the fused host. If
    ``name`` already exists its layout must fit (same modules and parts, rank at least the file's);
    otherwise it is created from a config derived from the file. Returns ``name``.
    """
    config, tensors = read_hf_peft(directory)
    source = os.path.join(str(directory), CONFIG_NAME)
    check_config(config, source)
    check_base(read_fingerprint(directory), base_fingerprint(model), f"HF PEFT adapter {str(directory)!r}",
               strict_base)
    modules = parse_lora_tensors(config, tensors, source)
    layout = spec.layout(model, None)
    where = {hf_path: (host, start, size) for host, entries in layout.items() for hf_path, start, size in entries}
    # group by our host: host path -> [(row start, rows, A, B, scale, HF module)]
    hosts = defaultdict(list)
    for module, (a, b, scale) in modules.items():
        if module not in where:
            example = next(iter(where), "")
            raise ValueError(f"{source}: LoRA on module {module!r} has no counterpart in this model (a layer it "
                             "lacks, gate_proj on a non-gated MLP, or another architecture); this model's modules "
                             f"are named like {example!r}.")
        host, start, size = where[module]
        linear = model.get_submodule(host)
        if a.shape[1] != linear.in_features or b.shape[0] != size:
            raise ValueError(f"{source}: module {module!r} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}, "
                             f"but this model's {host} needs lora_A [r, {linear.in_features}] and "
                             f"lora_B [{size}, r]; the adapter was made for another model.")
        hosts[host].append((start, size, a, b, scale, module))
    common_scale = Counter(m[2] for m in modules.values()).most_common(1)[0][0]
    rslora = bool(config.get("use_rslora"))
    plan = {}  # host path -> (slices, dim, scale, [(A, B, scale)], out_features)
    for host, entries in hosts.items():
        entries.sort(key=lambda e: e[0])
        for (s0, n0, *_, m0), (s1, *_, m1) in zip(entries, entries[1:]):
            if s1 < s0 + n0:
                raise ValueError(f"{source}: modules {m0!r} and {m1!r} both adapt the same rows of {host}; "
                                 "a file may hold either the fused or the split LoRA, not both.")
        dim = max(e[2].shape[0] for e in entries)
        scales = [e[4] for e in entries]
        scale = common_scale if common_scale in scales else scales[0]
        slices = [(s, n) for s, n, *_ in entries]
        plan[host] = (slices, dim, scale, [(a, b, s) for _, _, a, b, s, _ in entries],
                      model.get_submodule(host).out_features)
    if name not in model.adapter_names:
        model.add_adapter(_configs_for(plan, model, spec, layout, rslora, float(config.get("lora_dropout") or 0.0)),
                          name)
        for *_, adapter in _lora_entries(model, name):
            adapter.train(model.training)  # new modules start in train mode: no dropout in an eval model
    _copy_in(model, plan, name, source)
    return name


def _part_names(block, host: str, slices) -> list[str]:
    inverse = {v: k for k, v in host_parts(block, host).items()}
    return [inverse.get(s) for s in slices]


def _targets(model, spec: HFPeftSpec, host_path: str, slices, out_features: int) -> tuple[str, ...]:
    """Target names that select exactly ``slices`` of one host: with ``spec.part_targets``, the host
    or its parts' HF names (combined with layer_selection); else its path (plus the part)."""
    block_path, host = host_path.rsplit(".", 1)
    parts = _part_names(model.get_submodule(block_path), host, slices)
    whole = slices == [(0, out_features)]
    if not whole and None in parts:
        raise ValueError(f"LoRA rows {slices} of {host_path} do not match its parts.")
    if spec.part_targets is None:
        return (host_path,) if whole else tuple(f"{host_path}.{p}" for p in parts)
    return (host,) if whole else tuple(spec.part_targets[host][p] for p in parts)


def _configs_for(plan: dict, model, spec: HFPeftSpec, layout: dict, rslora: bool,
                 dropout: float) -> list[LoraPEFTConfig]:
    """One LoraPEFTConfig per (dim, scale) with exact module paths as targets, or, with
    ``spec.part_targets``, per (host, parts, dim, scale) with the layers they cover."""
    by_path = spec.part_targets is None
    groups = defaultdict(list)
    for host_path, (slices, dim, scale, _, out_features) in plan.items():
        targets = _targets(model, spec, host_path, slices, out_features)
        if by_path:
            groups[((), dim, scale)] += targets
        else:
            groups[(targets, dim, scale)].append(_layer_of(host_path) + 1)
    n_layers = len({_layer_of(path) for path in layout})
    cfgs = []
    for (targets, dim, scale), members in sorted(groups.items(), key=lambda kv: (kv[1][0], kv[0][0])):
        common = dict(dim=dim, alpha=scale * (math.sqrt(dim) if rslora else dim), dropout=dropout,
                      use_rslora=rslora, lora_B_init_method="zero")
        if by_path:
            cfgs.append(LoraPEFTConfig(target_modules=sorted(members), **common))
        else:
            cfgs.append(LoraPEFTConfig(target_modules=list(targets), **common,
                                       layer_selection=None if len(members) == n_layers else sorted(members)))
    return cfgs


@torch.no_grad()
def _copy_in(model, plan: dict, name: str, source: str) -> None:
    slots = {}
    for path, block, host, adapter in _lora_entries(model, name):
        slots[f"{path.rsplit('.', 1)[0]}.{host}"] = adapter
    extra = sorted(set(slots) - set(plan))
    missing = sorted(set(plan) - set(slots))
    if extra or missing:
        raise ValueError(f"{source}: existing adapter {name!r} does not fit the file: it adapts {extra[:4]} that "
                         f"the file lacks and lacks {missing[:4]}. Load under a new name.")
    for host, (slices, dim, scale, weights, _) in plan.items():
        adapter = slots[host]
        if adapter.out_slices != slices or adapter.dim < dim:
            raise ValueError(f"{source}: existing adapter {name!r} on {host} has slices "
                             f"{adapter.out_slices} and rank {adapter.dim}; the file needs {slices} and rank {dim}.")
        for p, (a, b, s) in enumerate(weights):  # zero-pads a lower rank
            adapter.write_part(p, a.float(), b.float() * (s / adapter.scale) if s != adapter.scale else b.float())
