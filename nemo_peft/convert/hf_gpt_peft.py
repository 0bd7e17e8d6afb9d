"""The decoder-only family's HF-PEFT layout: which Hugging Face modules make up each of our
fused hosts. Llama-style checkpoints (llama, mistral, qwen2) keep q/k/v and gate/up apart;
GPT-2 has a fused ``c_attn`` and a plain ``c_fc``."""
from __future__ import annotations

from nemo_peft.convert.hf_gpt_config import SUPPORTED, infer_model_type
from nemo_peft.convert.hf_peft_layout import HFPeftSpec, Layout
from nemo_peft.core.slots import host_parts

# host -> [(HF module suffix, our part or None = whole host)], per naming scheme
_LLAMA = {
    "linear_qkv": [("self_attn.q_proj", "q"), ("self_attn.k_proj", "k"), ("self_attn.v_proj", "v")],
    "linear_proj": [("self_attn.o_proj", None)],
    "linear_fc1": [("mlp.gate_proj", "gate"), ("mlp.up_proj", "up")],
    "linear_fc2": [("mlp.down_proj", None)],
}
_GPT2 = {
    "linear_qkv": [("attn.c_attn", None)], "linear_proj": [("attn.c_proj", None)],
    "linear_fc1": [("mlp.c_fc", None)], "linear_fc2": [("mlp.c_proj", None)],
}
_SCHEMES = {"llama": (_LLAMA, "model.layers.{i}."), "gpt2": (_GPT2, "transformer.h.{i}.")}
_HOST_BLOCK = {"linear_qkv": "self_attention", "linear_proj": "self_attention",
               "linear_fc1": "mlp", "linear_fc2": "mlp"}


def _hf_modules(block, host: str, table: dict) -> list[tuple[str, int, int]]:
    """(HF module suffix, row start, rows) of each HF module that makes up our ``host``."""
    parts = host_parts(block, host)
    out = []
    for suffix, part in table[host]:
        if part is None:
            out.append((suffix, 0, getattr(block, host).out_features))
        elif part in parts:
            out.append((suffix, *parts[part]))
        elif part == "up" and list(parts) == ["all"]:  # non-gated MLP: up_proj is the whole fc1
            out.append((suffix, *parts["all"]))
    return out


def _scheme_layout(model, scheme: str) -> Layout:
    table, prefix = _SCHEMES[scheme]
    out = {}
    for i, layer in enumerate(model.decoder.layers):
        for host, block_name in _HOST_BLOCK.items():
            block = layer.get_submodule(block_name)
            out[f"decoder.layers.{i}.{block_name}.{host}"] = [
                (prefix.format(i=i) + suffix, start, size) for suffix, start, size in _hf_modules(block, host, table)]
    return out


def gpt_peft_layout(model, model_type: str | None) -> Layout:
    """Our host path -> HF modules; without ``model_type`` (import) both namings at once."""
    if model_type is not None:
        return _scheme_layout(model, "gpt2" if model_type == "gpt2" else "llama")
    layout = _scheme_layout(model, "llama")
    for host, modules in _scheme_layout(model, "gpt2").items():
        layout[host] = layout[host] + modules
    return layout


GPT_PEFT_SPEC = HFPeftSpec(
    task_type="CAUSAL_LM",
    model_types=SUPPORTED,
    default_model_type=lambda model: infer_model_type(model.config),
    layout=gpt_peft_layout,
    part_targets={host: {part: suffix.rsplit(".", 1)[1] for suffix, part in modules if part}
                  for host, modules in _LLAMA.items() if any(part for _, part in modules)},
    conv1d_model_types=("gpt2",),
)
