"""What an adapter records about the base model it was trained on, and the check on load.

The fingerprint is about values, not files: the model class, its config (minus provenance and
special-token ids), the tokenizer's vocabulary hash when known, and for every host weight the
adapter sits on, its shape and a fixed sample of its values. The same base read from another
format (GGUF, HF directory, native) or cast to bf16 matches; a different base of the same shapes
(another fine-tune, one weight perturbed) does not. Sampling keeps it fast on large models.
"""
from __future__ import annotations

import hashlib
import json
import warnings

import torch
from torch import nn

VERSION = 1
SAMPLES = 32  # values per host weight, evenly spread over the flattened tensor
RTOL = 5e-3  # above bf16's rounding (2**-8): a bf16 copy of the same base still matches
# config fields that say where a model came from or how it is prompted, not what it computes
_NOT_MATH = {"extra", "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
             "max_position_embeddings"}


def vocab_hash(vocab: dict[str, int]) -> str:
    """sha256 of a tokenizer's token -> id map (order-independent)."""
    return hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()


def _sample(weight: torch.Tensor) -> list[float]:
    w = weight.detach()
    n = w.numel()
    idx = torch.tensor(sorted({(k * n) // SAMPLES + (k * 7919) % max(1, n // SAMPLES) for k in range(SAMPLES)}),
                       device=w.device).clamp(max=n - 1)
    # positions in the row-major flattening, read in place: reshape(-1) would copy a whole
    # column-major weight (modules/weight_layout.py) to take 32 values
    values = w[tuple(torch.unravel_index(idx, w.shape))] if w.dim() else w.reshape(1)[idx]
    return [float(v) for v in values.float().cpu()]


def _math_config(model) -> dict:
    cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(vars(model.config))
    return {k: v for k, v in sorted(cfg.items()) if k not in _NOT_MATH}


def host_weights(model) -> dict[str, torch.Tensor]:
    """Every linear an adapter slot can sit beside (whatever the adapter: the base is one thing),
    and the token embedding (virtual tokens and bottlenecks sit beside no linear)."""
    out = {}
    for ctx in model.slot_contexts():
        host = getattr(ctx.block, ctx.spec.host) if ctx.spec.host else None
        weight = getattr(host, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point():
            out[f"{ctx.path}.{ctx.spec.host}.weight"] = weight
    emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is not None:
        out["<embedding>"] = emb.weight
    return out


def base_fingerprint(model) -> dict:
    """The fingerprint of ``model``'s base weights (take it before adapters are merged into them)."""
    extra = getattr(model.config, "extra", {}) or {}
    return {
        "version": VERSION,
        "model_class": type(model).__name__,
        "config": _math_config(model),
        "source": extra.get("path") or extra.get("source"),
        "tokenizer_vocab_sha256": getattr(model, "tokenizer_vocab_sha256", None),  # set by the loaders
        "weights": {k: {"shape": list(w.shape), "sample": _sample(w)}
                    for k, w in sorted(host_weights(model).items())},
    }


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= RTOL * max(abs(x), abs(y)) + 1e-12 for x, y in zip(a, b))


def differences(saved: dict, current: dict) -> list[str]:
    """What differs between two fingerprints, in words; empty when they describe the same base."""
    out = []
    if saved.get("model_class") != current.get("model_class"):
        out.append(f"model class {saved.get('model_class')} vs {current.get('model_class')}")
    keys = sorted(set(saved.get("config", {})) | set(current.get("config", {})))
    changed = [k for k in keys if saved.get("config", {}).get(k) != current.get("config", {}).get(k)]
    if changed:
        out.append("config " + ", ".join(f"{k}={saved['config'].get(k)!r} vs {current['config'].get(k)!r}"
                                         for k in changed[:4]) + (" ..." if len(changed) > 4 else ""))
    tok_a, tok_b = saved.get("tokenizer_vocab_sha256"), current.get("tokenizer_vocab_sha256")
    if tok_a and tok_b and tok_a != tok_b:
        out.append(f"tokenizer vocabulary {tok_a[:12]} vs {tok_b[:12]}")
    wa, wb = saved.get("weights", {}), current.get("weights", {})
    shapes = [k for k in wa if k in wb and wa[k]["shape"] != wb[k]["shape"]]
    values = [k for k in wa if k in wb and k not in shapes and not _close(wa[k]["sample"], wb[k]["sample"])]
    if shapes:
        out.append(f"{len(shapes)} host weight shape(s) differ, e.g. {shapes[0]}")
    if values:
        out.append(f"{len(values)} of {len(wa)} host weights hold other values, e.g. {values[0]}")
    return out


def check_base(saved: dict | None, current: dict, source: str, strict: bool = True) -> None:
    """Raise (``strict``) or warn when ``saved`` (an adapter's record of its base) is not ``current``."""
    if saved is None:
        warnings.warn(f"{source} records no base-model fingerprint (saved by an older nemo_peft or converted from "
                      "another tool), so nothing checks it was trained on this base model.", stacklevel=3)
        return
    diffs = differences(saved, current)
    if not diffs:
        return
    def origin(fp):
        return f"{fp.get('model_class')} from {fp['source']!r}" if fp.get("source") else \
            f"{fp.get('model_class')} built in Python"
    what = (f"{source} was trained on another base model: {'; '.join(diffs)} (adapter's base: {origin(saved)}; "
            f"this model: {origin(current)}).")
    if strict:
        raise ValueError(what + " Load it onto the base it was trained on, or pass strict_base=False "
                                "(model.peft.strict_base=false / strict_base=false in generate.py) to load it anyway.")
    warnings.warn(what + " Loading anyway (strict_base=False).", stacklevel=3)
