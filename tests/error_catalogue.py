"""The catalogue of errors a user may see: each bad input or fault, how to provoke it, what it raises,
and what to do. ``tests/test_error_catalogue.py`` runs every trigger; ``scripts/error_table.py`` renders
the catalogue as the README's "Errors you may see" table, so the README cannot drift from the code.

An ``Entry`` holds:

- ``id``: a short unique name;
- ``what``: the bad input or fault, in user words;
- ``trigger(tmp_path)``: provokes it through what a user touches: ``examples/*.py`` Hydra overrides
  (composed in-process exactly as the scripts compose them, then run through the recipes),
  ``examples/export.py`` / ``examples/merge.py`` argument lists, the Python API, or damaged files;
- ``expected``: (exception type, regex that ``re.search`` must find in the full message);
- ``shown``: what the README shows, ``shown_message(exc, tmp_path)``: the type and the first sentence of
  the message, with paths under ``tmp_path`` or the repository elided to ``…``; the test checks it,
  reading each ``…`` in ``shown`` as "any text" (so a library's own words may be elided too);
- ``fix``: the recovery, one line in user words.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from safetensors.torch import load_file, save_file

from nemo_peft import (CanonicalAdaptersPEFTConfig, DoraPEFTConfig, GPTConfig, GPTModel, IA3PEFTConfig,
                       LoraPEFTConfig, PromptTuningPEFTConfig, QLoraPEFTConfig, load_adapters, load_pretrained, save_hf,
                       save_hf_peft, save_model)
from nemo_peft.data.tokenizer import Tokenizer
from nemo_peft.recipes.finetune import run_finetune
from nemo_peft.recipes.generate import run_generate
from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


@dataclass(frozen=True)
class Entry:
    id: str
    group: str
    what: str
    trigger: Callable[[Path], object]
    expected: tuple[type[BaseException], str]
    shown: str
    fix: str


GROUPS = {
    "config": "Configuration (`examples/*.py` overrides)",
    "peft": "PEFT configs and adapter operations",
    "data": "Training data",
    "ckpt": "Checkpoints, adapters and runs",
    "export": "Export and recovery",
}


# ---------------------------------------------------------------- what a message shows

MAX_SHOWN = 180
ELIDED = "…"  # in ``shown``: a part of the message that depends on the machine or on a library's version
_OPEN, _CLOSE = "([{", ")]}"
_WRAPPED = re.compile(r"\(([A-Z]\w*(?:Error|Exception)): ")


def _matching_paren(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (or len(text))."""
    depth = 0
    for i in range(start, len(text)):
        depth += (text[i] in _OPEN) - (text[i] in _CLOSE)
        if depth == 0:
            return i
    return len(text)


def elide_wrapped_errors(text: str) -> str:
    """``(RuntimeError: <a library's own words>)`` -> ``(RuntimeError: …)``."""
    out, pos = [], 0
    for m in _WRAPPED.finditer(text):
        if m.start() < pos:
            continue
        end = _matching_paren(text, m.start())
        out += [text[pos:m.start()], f"({m.group(1)}: {ELIDED})"]
        pos = end + 1
    return "".join(out) + text[pos:]


def first_sentence(text: str) -> str:
    """Up to the first period outside brackets that ends a sentence (followed by whitespace or the
    end; not "e.g.", "i.e." or "..."), or up to a blank line."""
    depth = 0
    for i, ch in enumerate(text):
        depth = max(0, depth + (ch in _OPEN) - (ch in _CLOSE))
        if text.startswith("\n\n", i):
            return text[:i]
        if ch == "." and depth == 0 and (i + 1 == len(text) or text[i + 1].isspace()):
            if not text[:i + 1].endswith(("e.g.", "i.e.", "...")):
                return text[:i + 1]
    return text


def shown_message(exc: BaseException, tmp_path) -> str:
    """``Type: first sentence``: paths under ``tmp_path`` or the repository, hash prefixes and the
    wrapped errors of libraries elided to …, whitespace collapsed, at most MAX_SHOWN characters
    (cut at a word, marked with …)."""
    text = str(exc)
    for prefix in sorted({str(tmp_path), os.path.realpath(str(tmp_path)), str(ROOT)}, key=len, reverse=True):
        text = text.replace(prefix, ELIDED)
    text = re.sub(r"\b[0-9a-f]{8,}\.\.\.", ELIDED, text)
    text = " ".join(first_sentence(elide_wrapped_errors(text)).split())
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN].rsplit(" ", 1)[0] + " " + ELIDED
    return f"{type(exc).__name__}: {text}"


def shown_matches(shown: str, actual: str) -> bool:
    """``actual`` (a shown_message) is ``shown``, where each … in ``shown`` stands for any text."""
    pattern = ".*?".join(re.escape(part) for part in shown.split(ELIDED))
    return re.fullmatch(pattern, actual, re.S) is not None


def provoke(entry: Entry, tmp_path) -> BaseException | None:
    """Run the trigger in ``tmp_path``; the exception it raised, or None."""
    try:
        entry.trigger(Path(tmp_path))
    except BaseException as e:  # noqa: BLE001 - what the user sees, whatever it is
        if isinstance(e, KeyboardInterrupt):
            raise
        return e
    return None


# ---------------------------------------------------------------- the recipes, as examples/*.py run them

def hydra_config(*overrides, config="finetune"):
    """What ``python examples/<config>.py OVERRIDES`` composes (the same argv rewriting, in-process)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=peft_scheme_args(list(overrides)))


def write_jsonl(path: Path, rows) -> Path:
    """Rows as JSONL; a str row is written verbatim, bytes rows make a binary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if all(isinstance(r, bytes) for r in rows):
        path.write_bytes(b"".join(rows))
    else:
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def train_file(tmp_path: Path) -> Path:
    rows = [{"input": f"x: {w} =>", "output": w} for w in ("abc", "bcd", "cab", "dda") * 4]
    return write_jsonl(tmp_path / "data" / "train.jsonl", rows)


def finetune_args(tmp_path: Path, *extra, model="tiny", train=None, out="run") -> list[str]:
    """A two-step LoRA fine-tune of the tiny random model: examples/finetune.py's overrides."""
    train = train or train_file(tmp_path)
    return [f"model={model}", f"exp_manager.output_dir={tmp_path / out}", "trainer.max_steps=2",
            "eval_before=false", "model.eval_exact_match=false", "model.peft.lora_tuning.dim=4",
            f"data.train_ds.file_names=[{train}]", "data.validation_ds=null", "data.test_ds=null",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "exp_manager.checkpoint.every_n_train_steps=1", *extra]


def finetune(tmp_path: Path, *extra, **kw):
    """``python examples/finetune.py`` with finetune_args, in-process."""
    with contextlib.redirect_stdout(io.StringIO()):
        return run_finetune(hydra_config(*finetune_args(tmp_path, *extra, **kw)))


def generate(tmp_path: Path, *extra, model="tiny"):
    """``python examples/generate.py`` on a small predict file, in-process."""
    data = train_file(tmp_path)
    args = [f"model={model}", f"data.predict_ds.file_names=[{data}]", f"output_file={tmp_path / 'predictions.jsonl'}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        return run_generate(hydra_config(*args, config="generate"))


def finetune_on(rows, *extra):
    """A fine-tune whose training file holds ``rows``."""
    return lambda tmp: finetune(tmp, *extra, train=write_jsonl(tmp / "data" / "train.jsonl", rows))


# ChatML, as SmolLM2 and Qwen2 write it; the tiny model's byte-level tokenizer has no template of its own
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def hydra_quoted(text: str) -> str:
    """``text`` as a single-quoted Hydra override value (Jinja's braces and quotes stay literal)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def chat_finetune(tmp_path: Path, train: Path, *extra, template: str | None = CHATML):
    """``finetune.py data=chat_dates`` on ``train`` (train split only) with ``template`` as
    ``data.train_ds.chat_template`` (None: the model's own, which the tiny model lacks)."""
    args = ["data=chat_dates", "data.predict_ds=null"]  # fine-tuning also reads predict_ds (stop tokens)
    if template is not None:
        args.append(f"data.train_ds.chat_template={hydra_quoted(template)}")
    return finetune(tmp_path, *args, *extra, train=train)


def chat_finetune_on(rows, *extra, template: str | None = CHATML):
    """A chat fine-tune (``chat_finetune``) whose training file holds ``rows``."""
    return lambda tmp: chat_finetune(tmp, write_jsonl(tmp / "data" / "train.jsonl", rows), *extra, template=template)


def chat(*turns) -> dict:
    """A ``messages`` record of (role, content) turns."""
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


HELLO = chat(("user", "hi"), ("assistant", "hello"))


_RUN_CACHE: dict[str, Path] = {}


def finished_run(tmp_path: Path) -> Path:
    """``tmp_path/run``: the output_dir of a finished two-step run (adapter + checkpoints/last.ckpt).
    The run is made once per process and copied."""
    if "run" not in _RUN_CACHE:
        cache = Path(tempfile.mkdtemp(prefix="nemo_peft_catalogue_"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        finetune(cache)
        _RUN_CACHE["run"] = cache / "run"
    out = tmp_path / "run"
    shutil.copytree(_RUN_CACHE["run"], out)
    train_file(tmp_path)  # the run's training file, at the same place under tmp_path
    return out


def _export_main(script: str):
    """``main(argv)`` of examples/export.py or examples/merge.py."""
    spec = importlib.util.spec_from_file_location(f"example_{script}", ROOT / "examples" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def export_py(*argv):
    with contextlib.redirect_stdout(io.StringIO()):
        return _export_main("export")([str(a) for a in argv])


def merge_py(*argv):
    with contextlib.redirect_stdout(io.StringIO()):
        return _export_main("merge")([str(a) for a in argv])


# ---------------------------------------------------------------- small models, adapters and files

def tiny_gpt(seed: int = 0) -> GPTModel:
    """A small Llama-style model on the byte-level tokenizer's vocabulary."""
    torch.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=Tokenizer.byte_level().vocab_size, hidden_size=32, num_layers=2,
                              num_attention_heads=4, num_query_groups=2, ffn_hidden_size=64)).eval()


def lora(**kw) -> LoraPEFTConfig:
    return LoraPEFTConfig(**{"target_modules": ["q_proj", "v_proj"], "dim": 4, **kw})


def with_adapters(*cfgs_by_name, seed=0, **named) -> GPTModel:
    """tiny_gpt with adapter "default" = cfgs_by_name (if given) and one adapter per keyword."""
    model = tiny_gpt(seed)
    if cfgs_by_name:
        model.add_adapter(list(cfgs_by_name))
    for name, cfg in named.items():
        model.add_adapter(cfg, name=name)
    return model


def saved_adapter(tmp_path: Path, name="adapter", seed=0, model=None) -> Path:
    """A LoRA adapter of tiny_gpt(seed) saved to ``tmp_path/name``."""
    model = model or with_adapters(lora(), seed=seed)
    path = tmp_path / name
    model.save_adapters(str(path))
    return path


def native_base(tmp_path: Path, seed=0, tokenizer=True) -> Path:
    """tiny_gpt(seed) saved as a nemo_peft model directory (with the byte-level tokenizer)."""
    path = tmp_path / "base"
    save_model(tiny_gpt(seed), str(path), Tokenizer.byte_level() if tokenizer else None)
    return path


def hf_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "hf_model"
    save_hf(tiny_gpt(), str(path), Tokenizer.byte_level())
    return path


def _rewrite_config(directory: Path, **changes) -> None:
    path = directory / "config.json" if (directory / "config.json").is_file() else directory / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


# ---------------------------------------------------------------- triggers that need a few lines

def _two_configs_one_slot(tmp):
    tiny_gpt().add_adapter([LoraPEFTConfig(target_modules=["linear_qkv"], dim=4),
                            LoraPEFTConfig(target_modules=["q_proj"], dim=2)])


def _duplicate_name(tmp):
    model = with_adapters(lora())
    model.add_adapter(lora())


def _merge_bottleneck(tmp):
    with_adapters(CanonicalAdaptersPEFTConfig(adapter_dim=4)).merge_adapters()


def _disable_merged(tmp):
    model = with_adapters(lora())
    model.merge_adapters()
    with model.disable_adapters():
        pass


def _delete_merged(tmp):
    model = with_adapters(lora())
    model.merge_adapters()
    model.delete_adapter("default")


def _route(names, rows=2, model=None):
    def trigger(tmp):
        m = model() if model else with_adapters(a=lora(), b=lora())
        with m.route(names):
            m(torch.zeros(rows, 4, dtype=torch.long))
    return trigger


def _route_merged(tmp):
    model = with_adapters(a=lora(), b=lora())
    model.merge_adapters(["a"])
    with model.route(["a", "b"]):
        pass


def _weighted(adapters, weights, new_name="ab", **named):
    return lambda tmp: with_adapters(**(named or {"a": lora(), "b": lora()})).add_weighted_adapter(
        adapters, weights, new_name)


def _adapter_missing_file(tmp):
    path = saved_adapter(tmp)
    (path / "adapter_weights.safetensors").unlink()
    tiny_gpt().load_adapters(str(path))


def _adapter_truncated(tmp):
    path = saved_adapter(tmp)
    weights = path / "adapter_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    tiny_gpt().load_adapters(str(path))


def _adapter_config_truncated(tmp):
    path = saved_adapter(tmp)
    config = path / "adapter_config.json"
    config.write_text(config.read_text()[:40])
    tiny_gpt().load_adapters(str(path))


def _adapter_mixed_pair(tmp):
    one = saved_adapter(tmp, "adapter")
    other = saved_adapter(tmp, "other", model=with_adapters(lora(lora_A_init_method="normal")))
    shutil.copy(other / "adapter_weights.safetensors", one / "adapter_weights.safetensors")
    tiny_gpt().load_adapters(str(one))


def _adapter_non_finite(tmp):
    """An adapter file with a NaN, as a diverged run of another tool (or an older version) writes it."""
    path = saved_adapter(tmp)
    weights = path / "adapter_weights.safetensors"
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(weights))
    _rewrite_config(path, weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest())
    load_adapters(tiny_gpt(), str(path))


def _adapter_unknown_method(tmp):
    path = saved_adapter(tmp)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["adapters"]["default"][0]["method"] = "my_lora"
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    tiny_gpt().load_adapters(str(path))


def _hf_peft_into_model_load(tmp):
    hf = tmp / "hf_adapter"
    save_hf_peft(with_adapters(lora()), str(hf), "my/base")
    tiny_gpt().load_adapters(str(hf))


def _save_over_file(tmp):
    (tmp / "adapter").write_text("notes")
    with_adapters(lora()).save_adapters(str(tmp / "adapter"))


def _save_disk_full(tmp):
    def full(tensors, filename, *args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    with mock.patch("nemo_peft.core.adapter_io.save_file", full):
        with_adapters(lora()).save_adapters(str(tmp / "adapter"))


def _run_disk_full(tmp):
    usage = namedtuple("usage", "total used free")
    with mock.patch("nemo_peft.recipes.finetune.shutil.disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6)):
        finetune(tmp)


def _lock(content):
    def trigger(tmp):
        (tmp / "run").mkdir()
        (tmp / "run" / ".lock").write_text(content)
        finetune(tmp)
    return trigger


def _resume(*extra):
    def trigger(tmp):
        out = finished_run(tmp)
        finetune(tmp, f"exp_manager.resume_from_checkpoint={out / 'checkpoints' / 'last.ckpt'}",
                 "trainer.max_steps=3", *extra)
    return trigger


def _resume_non_finite(tmp):
    out = finished_run(tmp)
    last = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    next(iter(ckpt["state_dict"].values())).fill_(float("inf"))
    torch.save(ckpt, last)
    finetune(tmp, "exp_manager.resume_if_exists=true", "trainer.max_steps=3")


def _rerun_used_dir(tmp):
    finished_run(tmp)
    finetune(tmp)


def _cores(n: int):
    """This machine seen as having ``n`` CPU cores, so a trigger does not depend on the real count."""
    return mock.patch("os.sched_getaffinity", lambda pid: set(range(n)))


def _wandb_missing(tmp):
    real = importlib.util.find_spec
    with mock.patch.object(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)):
        finetune(tmp, "exp_manager.create_wandb_logger=true")


def _too_many_devices(tmp):
    with _cores(4):
        finetune(tmp, "trainer.devices=64")


def _fsdp_qlora(tmp):
    with _cores(4):  # trainer=fsdp asks for two processes
        finetune(tmp, "trainer=fsdp", "model.peft.peft_scheme=qlora")


def _arch_mismatch(tmp):
    finetune(tmp, "model.arch=t5", f"model.restore_from_path={native_base(tmp)}", model="smollm2")


def _no_tokenizer(tmp):
    finetune(tmp, f"model.restore_from_path={native_base(tmp, tokenizer=False)}", model="smollm2")


def _hf_bin_only(tmp):
    path = hf_checkpoint(tmp)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"\0" * 16)
    load_pretrained(str(path))


def _hf_model_type(tmp):
    path = hf_checkpoint(tmp)
    _rewrite_config(path, model_type="bert")
    load_pretrained(str(path))


def _native_truncated(tmp):
    path = native_base(tmp)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    load_pretrained(str(path))


def _file(name, content: bytes):
    def make(tmp):
        path = tmp / name
        path.write_bytes(content)
        return path
    return make


def _merge_as(model_type):
    def trigger(tmp):
        base = native_base(tmp)
        model, _ = load_pretrained(str(base))
        model.add_adapter(lora())
        model.save_adapters(str(tmp / "adapter"))
        merge_py("--base-model", base, "--adapter", tmp / "adapter", "--output", tmp / "merged",
                 "--model-type", model_type)
    return trigger


def _to_hf_peft_two_adapters(tmp):
    base = native_base(tmp)
    model, _ = load_pretrained(str(base))
    model.add_adapter(lora(), name="a")
    model.add_adapter(lora(), name="b")
    model.save_adapters(str(tmp / "adapter"))
    export_py("--to-hf-peft", "--base-model", base, "--adapter", tmp / "adapter", "--output", tmp / "hf_adapter")


def _from_hf_peft(change=None, drop_weights=False):
    def trigger(tmp):
        base = native_base(tmp)
        model, _ = load_pretrained(str(base))
        model.add_adapter(lora())
        hf = tmp / "hf_adapter"
        save_hf_peft(model, str(hf), "my/base")
        if change:
            _rewrite_config(hf, **change)
        if drop_weights:
            (hf / "adapter_model.safetensors").unlink()
        export_py("--from-hf-peft", "--base-model", base, "--adapter", hf, "--output", tmp / "adapter")
    return trigger


def _from_checkpoint_into_used(tmp):
    out = finished_run(tmp)
    export_py("--from-checkpoint", out / "checkpoints" / "last.ckpt", "--output", out / "adapter")


def _from_checkpoint_foreign(tmp):
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}, "epoch": 3}, tmp / "other.ckpt")
    export_py("--from-checkpoint", tmp / "other.ckpt", "--output", tmp / "adapter")


def _from_checkpoint_truncated(tmp):
    out = finished_run(tmp)
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:200])
    export_py("--from-checkpoint", last, "--output", tmp / "recovered")


def _chat_template_file_syntax_error(tmp):
    template = tmp / "chat.jinja"
    template.write_text("{% for m in messages %}\n{{ m.role }}: {{ m.content }}\n{% endfor\n")
    return chat_finetune(tmp, write_jsonl(tmp / "data" / "train.jsonl", [HELLO]),
                         f"data.train_ds.chat_template_file={template}", template=None)


def _parquet_without_pyarrow(tmp):
    # pyarrow is imported only to read a .parquet file, so the file's bytes are never looked at
    data = _file("train.parquet", b"PAR1\0\0\0\0PAR1")(tmp)
    with mock.patch.dict(sys.modules, {"pyarrow": None, "pyarrow.parquet": None}):  # as if not installed
        return chat_finetune(tmp, data)


def _packed_validation(tmp):
    args = [a for a in finetune_args(tmp) if a != "data.validation_ds=null"]
    with contextlib.redirect_stdout(io.StringIO()):
        return run_finetune(hydra_config(*args, "+data.validation_ds.packed_sequence=true"))


# ---------------------------------------------------------------- the catalogue

_V = ValueError
_CATALOGUE_SPEC = [
    # ---- configuration
    ("hydra-unknown-key", "config", "A misspelt config key on the command line (`model.optim.learning_rate=1e-3`)",
     lambda tmp: finetune(tmp, "model.optim.learning_rate=1e-3"),
     (ConfigCompositionException, r"Could not override 'model\.optim\.learning_rate'"),
     "ConfigCompositionException: Could not override 'model.optim.learning_rate'.",
     "Correct the key (see the config reference below); the `+key=value` Hydra suggests is for new keys, not typos."),
    ("hydra-unknown-option", "config", "A config group option that does not exist (`model=tinyy`)",
     lambda tmp: finetune(tmp, model="tinyy"),
     (MissingConfigException, r"Could not find 'model/tinyy'.*Available options in 'model'"),
     "MissingConfigException: In 'finetune': Could not find 'model/tinyy'",
     "Pick one of the options the message lists (`model=smollm2`, `tiny` or `t5`)."),
    ("peft-unknown-option", "config", "An option the PEFT method does not have (`+model.peft.lora_tuning.rank=4`)",
     lambda tmp: finetune(tmp, "+model.peft.lora_tuning.rank=4"),
     (_V, r"Unknown option\(s\) \['rank'\] for LoraPEFTConfig; valid options: .*'dim'"),
     ("ValueError: Unknown option(s) ['rank'] for LoraPEFTConfig; valid options: ['alpha', "
      "'alpha_pattern', 'dim', 'dropout', 'dropout_position', 'layer_selection', 'lora_A_init_method', …"),
     "Use one of the valid options the message lists (LoRA's rank is `dim`)."),
    ("peft-unknown-scheme", "config", "A PEFT method that does not exist (`model.peft.peft_scheme=loraa`)",
     lambda tmp: finetune(tmp, "model.peft.peft_scheme=loraa"),
     (_V, r"Unknown model\.peft\.peft_scheme \['loraa'\]; choose from \[.*'lora'"),
     ("ValueError: Unknown model.peft.peft_scheme ['loraa']; choose from ['adapter', 'dora', 'ia3', 'lora', "
      "'prefix_tuning', 'prompt_tuning', 'ptuning', 'qlora'] (several as a comma list, e.g. …"),
     "Pick a scheme from the list (several as a comma list, e.g. `ptuning,adapter`)."),
    ("peft-scheme-null", "config", "Fine-tuning with no PEFT method (`model.peft.peft_scheme=null`)",
     lambda tmp: finetune(tmp, "model.peft.peft_scheme=null"),
     (_V, r"model\.peft\.peft_scheme is empty, so there is no adapter to train"),
     ("ValueError: model.peft.peft_scheme is empty, so there is no adapter to train; set it to a method "
      "(e.g. model.peft.peft_scheme=lora)."),
     "Set `model.peft.peft_scheme` to a method (e.g. `lora`); a fine-tune trains and saves an adapter."),
    ("model-unknown-arch", "config", "An unknown model family (`model.arch=bert`)",
     lambda tmp: finetune(tmp, "model.arch=bert"),
     (_V, r"model\.arch='bert' is not known; use one of \['gpt', 't5'\]"),
     ("ValueError: model.arch='bert' is not known; use one of ['gpt', 't5'] "
      '(gpt: decoder-only (GPT), t5: encoder-decoder (T5)).'),
     "Use `model.arch=gpt` or `model.arch=t5`."),
    ("model-granularity", "config", "An unsupported `model.activations_checkpoint_granularity` (`selective`)",
     lambda tmp: finetune(tmp, "model.activations_checkpoint_granularity=selective"),
     (_V, r"granularity='selective'; use null .* or 'full'"),
     ("ValueError: model.activations_checkpoint_granularity='selective'; use null "
      "(keep activations) or 'full' (recompute every layer in backward)."),
     "Use `null` (keep activations) or `full` (recompute each layer)."),
    ("optim-scheduler", "config", "An unknown lr scheduler (`model.optim.scheduler=cosin`)",
     lambda tmp: finetune(tmp, "model.optim.scheduler=cosin"),
     (_V, r"optim\.scheduler='cosin' \(model\.optim\.scheduler\); use 'cosine', 'linear' or 'constant'"),
     "ValueError: optim.scheduler='cosin' (model.optim.scheduler); use 'cosine', 'linear' or 'constant'.",
     "Use `cosine`, `linear` or `constant`."),
    ("model-unknown-key", "config", "A misspelt model option added with `+` (`+model.eval_exact_mach=false`)",
     lambda tmp: finetune(tmp, "+model.eval_exact_mach=false"),
     (_V, r"Unknown key\(s\) 'eval_exact_mach' \(did you mean 'eval_exact_match'\?\) in model"),
     ("ValueError: Unknown key(s) 'eval_exact_mach' (did you mean 'eval_exact_match'?) in model; valid keys: "
      "activations_checkpoint_granularity, arch, compile, eval_exact_match, from_scratch, …"),
     "Fix the key's spelling; Hydra's `+` adds keys, so a typo is only caught here."),
    ("exp-manager-unknown-key", "config", "A misspelt exp_manager option (`+exp_manager.overwrit=true`)",
     lambda tmp: finetune(tmp, "+exp_manager.overwrit=true"),
     (_V, r"Unknown key\(s\) 'overwrit' \(did you mean 'overwrite'\?\) in exp_manager"),
     ("ValueError: Unknown key(s) 'overwrit' (did you mean 'overwrite'?) in exp_manager; valid keys: adapter_dir, "
      "checkpoint, create_csv_logger, create_mlflow_logger, create_tensorboard_logger, …"),
     "Fix the key's spelling."),
    ("root-unknown-key", "config", "A misspelt top-level option (`+seeed=1`)",
     lambda tmp: finetune(tmp, "+seeed=1"),
     (_V, r"Unknown key\(s\) 'seeed' \(did you mean 'seed'\?\) in the finetune config"),
     ("ValueError: Unknown key(s) 'seeed' (did you mean 'seed'?) in the finetune config; valid keys: data, "
      "estimate, eval_before, exp_manager, model, name, seed, trainer."),
     "Fix the key's spelling."),
    ("checkpoint-unknown-key", "config", "A ModelCheckpoint option that does not exist (`+exp_manager.checkpoint.every_n_steps=1`)",
     lambda tmp: finetune(tmp, "+exp_manager.checkpoint.every_n_steps=1"),
     (_V, r"Unknown key\(s\) 'every_n_steps' .*in exp_manager\.checkpoint"),
     ("ValueError: Unknown key(s) 'every_n_steps' (did you mean 'every_n_epochs'?) in exp_manager.checkpoint "
      "(ModelCheckpoint's arguments); valid keys: auto_insert_metric_name, …"),
     "Use an argument of Lightning's `ModelCheckpoint` (here `every_n_train_steps`)."),
    ("optim-unknown-key", "config", "An optimizer option that does not exist (`+model.optim.momentum=0.9`)",
     lambda tmp: finetune(tmp, "+model.optim.momentum=0.9"),
     (_V, r"Unknown optim option\(s\) \['momentum'\]; valid options: .*'betas'"),
     ("ValueError: Unknown optim option(s) ['momentum']; valid options: ['betas', "
      "'eps', 'lr', 'min_lr', 'scheduler', 'warmup_steps', 'weight_decay']."),
     "Use the options listed (AdamW: `lr`, `betas`, `eps`, `weight_decay`, plus the schedule's)."),
    ("generation-unknown-key", "config", "A generation option that does not exist (`+model.generation.num_beams=4`)",
     lambda tmp: finetune(tmp, "+model.generation.num_beams=4"),
     (_V, r"Unknown model\.generation option\(s\) \['num_beams'\]; valid options: .*'top_p'"),
     ("ValueError: Unknown model.generation option(s) ['num_beams']; valid options: ['greedy', 'max_new_tokens', "
      "'repetition_penalty', 'seed', 'stop', 'stop_token_ids', 'temperature', 'top_k', …"),
     "Use an option the message lists (no beam search)."),
    ("generate-unknown-generation-key", "config",
     "A misspelt generation option in `generate.py` (`+model.generation.repetition_penalty_x=1.2`)",
     lambda tmp: generate(tmp, "+model.generation.repetition_penalty_x=1.2"),
     (_V, r"Unknown model\.generation option\(s\) \['repetition_penalty_x'\]; valid options: .*'repetition_penalty'"),
     ("ValueError: Unknown model.generation option(s) ['repetition_penalty_x']; valid options: ['greedy', "
      "'max_new_tokens', 'repetition_penalty', 'seed', 'stop', 'stop_token_ids', 'temperature', …"),
     "Fix the key's spelling (here `model.generation.repetition_penalty`)."),
    ("generation-repetition-penalty", "config", "A repetition penalty that is not positive (`model.generation.repetition_penalty=0`)",
     lambda tmp: generate(tmp, "model.generation.repetition_penalty=0"),
     (_V, r"repetition_penalty must be > 0, got 0"),
     ("ValueError: repetition_penalty must be > 0, got 0 (model.generation.repetition_penalty); "
      "1.0 turns it off."),
     "Use a penalty > 0: 1.0 is off, above 1 (e.g. 1.2) discourages repeats."),
    ("generation-top-p", "config", "A generation value out of range (`model.generation.top_p=0`)",
     lambda tmp: finetune(tmp, "model.generation.top_p=0"),
     (_V, r"top_p must be in \(0, 1\], got 0"),
     'ValueError: top_p must be in (0, 1], got 0 (model.generation.top_p).',
     "Set `model.generation.top_p` in (0, 1]; 1.0 turns it off."),
    ("trainer-unknown-key", "config", "A Lightning Trainer argument that does not exist (`+trainer.max_step=3`)",
     lambda tmp: finetune(tmp, "+trainer.max_step=3"),
     (_V, r"Unknown key\(s\) 'max_step' \(did you mean 'max_steps'\?\) in trainer"),
     ("ValueError: Unknown key(s) 'max_step' (did you mean 'max_steps'?) in trainer (lightning.Trainer's "
      "arguments, plus num_threads); valid keys: accelerator, accumulate_grad_batches, barebones, …"),
     "Use an argument of `lightning.Trainer` (here `trainer.max_steps`)."),
    ("global-batch-not-divisible", "config",
     "A global batch that is not a multiple of micro batch x processes (`model.global_batch_size=12`, micro batch 8)",
     lambda tmp: finetune(tmp, "model.global_batch_size=12"),
     (_V, r"model\.global_batch_size=12 is not a multiple of data\.train_ds\.micro_batch_size \(8\) x "
          r"data-parallel processes \(1 .*\) = 8; set it to a multiple of 8"),
     ("ValueError: model.global_batch_size=12 is not a multiple of data.train_ds.micro_batch_size (8) x "
      "data-parallel processes (1 = trainer.devices x trainer.num_nodes) = 8; set it to a multiple of …"),
     "Set `model.global_batch_size` to a multiple of micro batch x devices x nodes, or change the micro batch size."),
    ("global-batch-and-accumulation", "config",
     "`trainer.accumulate_grad_batches` that disagrees with `model.global_batch_size`",
     lambda tmp: finetune(tmp, "model.global_batch_size=16", "trainer.accumulate_grad_batches=3"),
     (_V, r"trainer\.accumulate_grad_batches=3 disagrees with model\.global_batch_size=16 \(= 8 x 1 x 2\)"),
     ("ValueError: trainer.accumulate_grad_batches=3 disagrees with model.global_batch_size=16 (= 8 x 1 x 2); "
      "set only one of them."),
     "Set only one of them: `model.global_batch_size` derives the accumulation."),
    ("trainer-unknown-strategy", "config", "A strategy that does not exist (`trainer.strategy=dpp`)",
     lambda tmp: finetune(tmp, "trainer.strategy=dpp"),
     (_V, r"trainer\.strategy='dpp' is not a strategy \(did you mean 'ddp'\?\)"),
     ("ValueError: trainer.strategy='dpp' is not a strategy (did you mean 'ddp'?); use auto (one process), ddp "
      "(data parallel; or trainer=ddp), fsdp (FSDP2, shards the frozen base too; or …"),
     "Use `auto`, `ddp`, `fsdp` (or `trainer=ddp` / `trainer=fsdp`), or a name in Lightning's StrategyRegistry."),
    ("fsdp-qlora", "config", "FSDP with QLoRA (`trainer=fsdp model.peft.peft_scheme=qlora`)",
     _fsdp_qlora,
     (_V, r"trainer\.strategy=fsdp cannot train adapter 'default' \(qlora\): its 4-bit base weights.*"
          r"Use trainer\.strategy=ddp"),
     ("ValueError: trainer.strategy=fsdp cannot train adapter 'default' (qlora): its 4-bit base weights are "
      "stored as packed uint8 buffers, which FSDP2's fully_shard does not shard, so every process …"),
     "Train QLoRA with `trainer=ddp` (or one process); FSDP shards full-precision bases only."),
    ("trainer-too-many-devices", "config", "More CPU devices than the machine has cores (`trainer.devices=64`)",
     _too_many_devices,
     (_V, r"trainer\.devices=64 but this machine has 4 CPU core\(s\) available; set trainer\.devices to at most 4"),
     ("ValueError: trainer.devices=64 but this machine has … CPU core(s) available; set trainer.devices to at "
      "most … (each CPU device is one process)."),
     "Set `trainer.devices` to at most the number of cores (each CPU device is one process), or the GPUs visible."),
    ("trainer-unknown-logger", "config", "A logger name in `trainer.logger` (`trainer.logger=tensorboard`)",
     lambda tmp: finetune(tmp, "trainer.logger=tensorboard"),
     (_V, r"trainer\.logger='tensorboard' is no longer a logger choice; use exp_manager\.create_tensorboard_logger"),
     ("ValueError: trainer.logger='tensorboard' is no longer a logger choice; use "
      "exp_manager.create_tensorboard_logger=true (<output_dir>/tensorboard)."),
     "Choose loggers with `exp_manager.create_csv_logger` (on by default), `create_tensorboard_logger`, "
     "`create_wandb_logger` or `create_mlflow_logger`; `trainer.logger=false` turns them all off."),
    ("logger-not-installed", "config", "A logger whose package is not installed (`exp_manager.create_wandb_logger=true`)",
     _wandb_missing,
     (ModuleNotFoundError, r"exp_manager\.create_wandb_logger=true needs the wandb package, which is not installed: "
                           r"pip install wandb"),
     ("ModuleNotFoundError: exp_manager.create_wandb_logger=true needs the wandb package, which is not installed: "
      "pip install wandb (or pip install 'nemo_peft[wandb]'), or set …"),
     "Install the package the message names (`pip install wandb`, `mlflow` or `tensorboard`), or turn that logger off."),
    ("data-t5-key-on-gpt", "config",
     "An encoder-decoder data option for a GPT model (`+data.train_ds.context_key=input`)",
     lambda tmp: finetune(tmp, "+data.train_ds.context_key=input"),
     (_V, r"data\.train_ds has \['context_key'\], options of encoder-decoder \(T5\) data.*prompt_template"),
     ("ValueError: data.train_ds has ['context_key'], options of encoder-decoder (T5) data; this "
      'decoder-only (GPT) model reads file_names, prompt_template, label_key, max_seq_length, …'),
     "Describe GPT data with `prompt_template` and `label_key` (see `conf/data/date_reformat.yaml`)."),
    ("data-gpt-key-on-t5", "config", "A GPT-only data option for a T5 model (`model=t5 +data.train_ds.add_bos=true`)",
     lambda tmp: finetune(tmp, "+data.train_ds.add_bos=true", model="t5"),
     (_V, r"data\.train_ds has \['add_bos'\], options of decoder-only \(GPT\) data.*context_key"),
     ("ValueError: data.train_ds has ['add_bos'], options of decoder-only (GPT) data; this encoder-decoder "
      '(T5) model reads file_names, context_key, label_key, max_seq_length, max_target_length, …'),
     "Describe T5 data with `context_key` and `label_key` (see `conf/data/date_reformat_t5.yaml`)."),
    ("scratch-other-family", "config", "A T5 field in a GPT model's `from_scratch` (`+model.from_scratch.d_model=64`)",
     lambda tmp: finetune(tmp, "+model.from_scratch.d_model=64"),
     (_V, r"Unknown GPTConfig keys \['d_model'\].*\['d_model'\] are T5Config options: set model\.arch=t5"),
     ("ValueError: model.from_scratch for arch=gpt: Unknown GPTConfig keys ['d_model']; valid keys: "
      "['activation', 'add_bias_linear', 'add_qkv_bias', 'bos_token_id', 'eos_token_id', 'extra', …"),
     "Use the fields of the family's config (`hidden_size` for GPT), or set `model.arch=t5`."),
    ("scratch-and-restore", "config", "Both a checkpoint and `from_scratch` (`model=tiny model.restore_from_path=...`)",
     lambda tmp: finetune(tmp, f"model.restore_from_path={tmp / 'my_model'}"),
     (_V, r"Set either model\.restore_from_path or model\.from_scratch, not both"),
     'ValueError: Set either model.restore_from_path or model.from_scratch, not both.',
     "Add `model.from_scratch=null` to load the checkpoint, or drop `restore_from_path`."),
    ("arch-mismatch", "config", "`model.arch=t5` with a GPT checkpoint",
     _arch_mismatch,
     (_V, r"model\.arch=t5 but .* holds a GPTModel \(gpt\); set model\.arch=gpt"),
     "ValueError: model.arch=t5 but '…/base' holds a GPTModel (gpt); set model.arch=gpt.",
     "Set `model.arch` to the checkpoint's family, as the message says."),
    ("data-unknown-section", "config", "A data split that does not exist (`+data.training_ds.file_names=[...]`)",
     lambda tmp: finetune(tmp, f"+data.training_ds.file_names=[{train_file(tmp)}]"),
     (_V, r"Unknown data section\(s\) \['training_ds'\]; valid: \[.*'train_ds'"),
     ("ValueError: Unknown data section(s) ['training_ds']; valid: "
      "['predict_ds', 'test_ds', 'train_ds', 'validation_ds']."),
     "Use `train_ds`, `validation_ds`, `test_ds` or `predict_ds`."),
    ("data-unknown-key", "config", "A data option that does not exist (`+data.train_ds.max_length=64`)",
     lambda tmp: finetune(tmp, "+data.train_ds.max_length=64"),
     (_V, r"Unknown key 'max_length' in train_ds; valid keys are: .*max_seq_length"),
     ("ValueError: Unknown key 'max_length' in train_ds; valid keys are: file_names, prompt_template, "
      'label_key, max_seq_length, truncation_field, add_bos, add_eos, max_num_samples, …'),
     "Use a key from the list (`max_seq_length` here)."),
    ("data-batch-size", "config", "A micro batch size below 1 (`data.train_ds.micro_batch_size=0`)",
     lambda tmp: finetune(tmp, "data.train_ds.micro_batch_size=0"),
     (_V, r"train_ds\.micro_batch_size must be >= 1, got 0"),
     'ValueError: train_ds.micro_batch_size must be >= 1, got 0.',
     "Set `micro_batch_size` to 1 or more."),
    ("data-template-label-not-last", "config", "A prompt template with the answer field before the prompt",
     lambda tmp: finetune(tmp, "data.train_ds.prompt_template='{output} <- {input}'"),
     (_V, r"the label placeholder \{output\} must be the last placeholder"),
     ("ValueError: prompt_template '{output} <- {input}': the label placeholder {output} must be the last "
      'placeholder (everything before it is the prompt at generation time); move the other …'),
     "Put `{output}` (the `label_key` field) last: everything before it is the prompt."),
    ("resume-and-overwrite", "config", "`exp_manager.resume_if_exists=true` and `exp_manager.overwrite=true` together",
     lambda tmp: finetune(tmp, "exp_manager.resume_if_exists=true", "exp_manager.overwrite=true"),
     (_V, r"resume_if_exists and exp_manager\.overwrite are both true; set one"),
     ('ValueError: exp_manager.resume_if_exists and exp_manager.overwrite are both true; set one: '
      'resume_if_exists continues the run in output_dir, overwrite replaces it.'),
     "Keep one: `resume_if_exists` continues the old run, `overwrite` replaces it."),

    # ---- PEFT configs and adapter operations
    ("lora-alpha", "peft", "A LoRA alpha of 0 or below (`model.peft.lora_tuning.alpha=0`)",
     lambda tmp: finetune(tmp, "model.peft.lora_tuning.alpha=0"),
     (_V, r"LoraPEFTConfig\.alpha=0: must be > 0 \(model\.peft\.lora_tuning\.alpha\)"),
     'ValueError: LoraPEFTConfig.alpha=0: must be > 0 (model.peft.lora_tuning.alpha)',
     "Give a positive alpha (the scale is alpha / dim)."),
    ("lora-dim", "peft", "A LoRA rank below 1 (`model.peft.lora_tuning.dim=0`)",
     lambda tmp: finetune(tmp, "model.peft.lora_tuning.dim=0"),
     (_V, r"LoraPEFTConfig\.dim=0: must be >= 1 \(model\.peft\.lora_tuning\.dim\)"),
     'ValueError: LoraPEFTConfig.dim=0: must be >= 1 (model.peft.lora_tuning.dim)',
     "Give a rank of 1 or more."),
    ("lora-dropout", "peft", "A dropout outside [0, 1) (`LoraPEFTConfig(dropout=1.0)`)",
     lambda tmp: LoraPEFTConfig(dropout=1.0),
     (_V, r"LoraPEFTConfig\.dropout=1\.0: must be >= 0 and < 1"),
     'ValueError: LoraPEFTConfig.dropout=1.0: must be >= 0 and < 1 (model.peft.lora_tuning.dropout)',
     "Use a dropout probability from 0 up to (not including) 1."),
    ("lora-unknown-target", "peft", "A LoRA target name that is no module of the model (`q_prj`)",
     lambda tmp: tiny_gpt().add_adapter(lora(target_modules=["q_prj"])),
     (_V, r"LoRA target\(s\) \['q_prj'\] matched no module in this model"),
     "ValueError: LoRA target(s) ['q_prj'] matched no module in this model.",
     "Use a name the message lists (Megatron, NeMo, Hugging Face names, wildcards or regexes)."),
    ("lora-bad-regex", "peft", "A target that is a broken regular expression (`linear_qkv[`)",
     lambda tmp: tiny_gpt().add_adapter(lora(target_modules=["linear_qkv["])),
     (_V, r"Target 'linear_qkv\[' is not a valid regular expression"),
     ("ValueError: Target 'linear_qkv[' is not a valid regular "
      'expression: unterminated character set at position 10.'),
     "Fix the pattern, or use a plain name or a shell wildcard (`*.linear_qkv`)."),
    ("lora-layer-selection", "peft", "A `layer_selection` with no layer of the model (`[5]` on 2 layers)",
     lambda tmp: tiny_gpt().add_adapter(lora(layer_selection=[5])),
     (_V, r"layer_selection=\[5\] selects no layer of this model \(layer numbers are 1-based\)"),
     ('ValueError: layer_selection=[5] selects no layer of this model (layer numbers '
      "are 1-based); pick numbers between 1 and the model's num_layers."),
     "Pick layer numbers from 1 to the model's `num_layers`."),
    ("ia3-bad-target", "peft", "An IA3 target that IA3 cannot scale (`query`)",
     lambda tmp: IA3PEFTConfig(target_modules=["query"]),
     (_V, r"IA3 target_modules \['query'\] are not valid; choose from"),
     ("ValueError: IA3 target_modules ['query'] are not valid; choose from ['down_proj', 'ia3_key', "
      "'ia3_mlp', 'ia3_value', 'k', 'k_proj', 'key', 'mlp', 'v', 'v_proj', 'value', 'wo']."),
     "Use the IA3 targets listed (`key`, `value`, `mlp` or their HF names)."),
    ("two-configs-one-slot", "peft", "Two configs of one adapter on the same module (`linear_qkv` and `q_proj`)",
     _two_configs_one_slot,
     (_V, r"Two configs of adapter 'default' fill the same slot .*lora_qkv; merge their targets"),
     ("ValueError: Two configs of adapter 'default' fill the same slot "
      "decoder.layers.0.self_attention.lora_qkv; merge their targets into one config or add them under "
      "different names."),
     "Merge the targets into one config, or add the configs under different adapter names."),
    ("duplicate-adapter-name", "peft", "Adding an adapter under a name already taken",
     _duplicate_name,
     (_V, r"An adapter named 'default' already exists; use another name or delete it first"),
     "ValueError: An adapter named 'default' already exists; use another name or delete it first.",
     "Pass another `name=`, or `delete_adapter` the old one first."),
    ("merge-not-mergeable", "peft", "Merging an adapter that has no merged form (a bottleneck adapter)",
     _merge_bottleneck,
     (_V, r"Adapter 'default' at .*\(BottleneckAdapter\) cannot be merged into the base weights"),
     ("ValueError: Adapter 'default' at decoder.layers.0.adapter_post_attn (BottleneckAdapter) cannot be merged "
      "into the base weights: its method has no merge (it is not a weight update)"),
     "Keep bottleneck, P-tuning, prompt and prefix adapters unmerged; only LoRA, DoRA and IA3 merge."),
    ("merge-qlora", "peft", "Merging a QLoRA adapter (its base weights are stored in 4 bits)",
     lambda tmp: with_adapters(QLoraPEFTConfig(target_modules=["q_proj"], dim=2, block_size=32)).merge_adapters(),
     (_V, r"\(QLoraAdapter\) cannot be merged into the base weights"),
     ("ValueError: Adapter 'default' at decoder.layers.0.self_attention.lora_qkv (QLoraAdapter) cannot be merged "
      "into the base weights: QLoRA adapters cannot be merged: their host's weight is …"),
     "Load the adapter into a full-precision base (`load_adapters`) and merge there."),
    ("disable-merged", "peft", "`disable_adapters()` while an adapter is merged",
     _disable_merged,
     (RuntimeError, r"are merged into the base weights; call unmerge_adapters\(\) before disabling"),
     ("RuntimeError: Adapter(s) ['default'] are merged into the base "
      'weights; call unmerge_adapters() before disabling them.'),
     "Call `model.unmerge_adapters()` first."),
    ("delete-merged", "peft", "Deleting a merged adapter",
     _delete_merged,
     (RuntimeError, r"Adapter 'default' is merged into the base weights; call unmerge_adapters\('default'\)"),
     ("RuntimeError: Adapter 'default' is merged into the base weights; "
      "call unmerge_adapters('default') before deleting it."),
     "Call `model.unmerge_adapters('default')`, then delete it."),
    ("route-unknown", "peft", "Routing a batch row to an adapter the model does not have",
     _route(["a", "zz"]),
     (_V, r"Unknown adapter\(s\) \['zz'\] in route\(\); this model has \['a', 'b'\]"),
     ("ValueError: Unknown adapter(s) ['zz'] in route(); this model has "
      "['a', 'b'] (use None or '__base__' for the base model)."),
     "Use the model's adapter names, or `None` for the base model."),
    ("route-rows", "peft", "Routing with a name list of another length than the batch",
     _route(["a", "b", None], rows=2),
     (_V, r"route\(\) was given 3 adapter names but the batch has 2 rows"),
     'ValueError: route() was given 3 adapter names but the batch has 2 rows; pass one name per row.',
     "Give exactly one name (or `None`) per batch row."),
    ("route-virtual-tokens", "peft", "Routing per sample to a prompt-tuning (virtual-token) adapter",
     _route(["p", None], model=lambda: with_adapters(p=PromptTuningPEFTConfig(virtual_tokens=2))),
     (_V, r"virtual-token and prefix adapters cannot be routed per sample"),
     ("ValueError: Adapter 'p' has a prompt adapter at embedding.prompt; virtual-token and "
      'prefix adapters cannot be routed per sample, run them in their own batch.'),
     "Run virtual-token and prefix adapters in a batch of their own (`set_active_adapters`)."),
    ("route-merged", "peft", "Routing while an adapter is merged",
     _route_merged,
     (RuntimeError, r"merged into the base weights, so they would apply to every row"),
     ("RuntimeError: Adapter(s) ['a'] are merged into the base weights, so they would "
      'apply to every row; call unmerge_adapters() before routing per sample.'),
     "Call `model.unmerge_adapters()` before routing."),
    ("weighted-count", "peft", "`add_weighted_adapter` with a different number of weights than adapters",
     _weighted(["a", "b"], [0.5]),
     (_V, r"got 2 adapters but 1 weights; give one weight per adapter"),
     'ValueError: add_weighted_adapter got 2 adapters but 1 weights; give one weight per adapter.',
     "Give one weight per adapter."),
    ("weighted-not-lora", "peft", "`add_weighted_adapter` over a non-LoRA adapter (IA3)",
     _weighted(["a", "b"], [0.5, 0.5], a=IA3PEFTConfig(), b=IA3PEFTConfig()),
     (_V, r"Adapter 'a' is not a LoRA adapter \(IA3PEFTConfig\); add_weighted_adapter combines LoRA"),
     ("ValueError: Adapter 'a' is not a LoRA adapter (IA3PEFTConfig); "
      'add_weighted_adapter combines LoRA adapters only.'),
     "Combine LoRA adapters only."),
    ("weighted-dora", "peft", "`add_weighted_adapter` over DoRA adapters",
     _weighted(["a", "b"], [0.5, 0.5], a=DoraPEFTConfig(target_modules=["q_proj"], dim=2),
               b=DoraPEFTConfig(target_modules=["q_proj"], dim=2)),
     (_V, r"Adapter 'a' is DoRA .* add_weighted_adapter combines plain LoRA"),
     ("ValueError: Adapter 'a' is DoRA (DoraAdapter at decoder.layers.0.self_attention.lora_qkv): its "
      'magnitudes rescale W + s·B·A row-wise, so it is no sum of B·A terms; add_weighted_adapter …'),
     "Combine plain LoRA (or QLoRA) adapters; DoRA's magnitudes are not a sum of B·A terms."),
    ("weighted-name-taken", "peft", "`add_weighted_adapter` naming the result after an existing adapter",
     _weighted(["a", "b"], [0.5, 0.5], new_name="a"),
     (_V, r"Cannot name the combined adapter 'a': an adapter of that name exists"),
     ("ValueError: Cannot name the combined adapter 'a': an adapter of that "
      'name exists; pick another name or delete it first.'),
     "Pick a new name for the combination."),

    # ---- training data
    ("data-missing-file", "data", "A training file that does not exist",
     lambda tmp: finetune(tmp, train=tmp / "data" / "trian.jsonl"),
     (FileNotFoundError, r"SFT data file not found: .*trian\.jsonl.*relative to the working directory"),
     "FileNotFoundError: SFT data file not found: '…/data/trian.jsonl'.",
     "Fix `data.*_ds.file_names` (relative paths start at the working directory)."),
    ("data-directory", "data", "A directory where a data file is expected",
     lambda tmp: finetune(tmp, train=train_file(tmp).parent),
     (IsADirectoryError, r"is a directory \(it holds \['train\.jsonl'\]\); file_names takes JSONL files"),
     ("IsADirectoryError: SFT data file '…/data' is a directory (it holds ['train.jsonl']); file_names "
      'takes JSONL files: list the .jsonl files themselves, e.g. [dir/train.jsonl].'),
     "List the `.jsonl` files themselves, e.g. `[dir/train.jsonl]`."),
    ("data-malformed-json", "data", "A line that is not valid JSON",
     finetune_on([{"input": "x: abc =>", "output": "abc"}, '{"input": "x: bcd =>", "output": "bcd"']),
     (_V, r"train\.jsonl, line 2: malformed JSON .*fix or remove the line"),
     "ValueError: …/data/train.jsonl, line 2: malformed JSON (Expecting ',' delimiter: line 2 column 1 (char 39)).",
     "Fix or remove the line the message names."),
    ("data-not-utf8", "data", "A data file that is not UTF-8 (e.g. Latin-1)",
     finetune_on([json.dumps({"input": "x: café =>", "output": "café"}).encode("latin-1").replace(b"\\u00e9", b"\xe9")
                  + b"\n"]),
     (_V, r"train\.jsonl, line 1: not UTF-8 text \(byte 0xe9 .*Save the file as UTF-8"),
     ('ValueError: …/data/train.jsonl, line 1: not UTF-8 text (byte 0xe9 '
      'at byte 18 of the line: invalid continuation byte).'),
     "Save the file as UTF-8."),
    ("data-bom-mid-file", "data", "Files joined with `cat` where the second starts with a byte-order mark",
     finetune_on([b'{"input": "x: abc =>", "output": "abc"}\n',
                  b'\xef\xbb\xbf{"input": "x: bcd =>", "output": "bcd"}\n']),
     (_V, r"train\.jsonl, line 2: malformed JSON"),
     ('ValueError: …/data/train.jsonl, line 2: malformed JSON (Unexpected UTF-8 '
      'BOM (decode using utf-8-sig): line 1 column 1 (char 0)).'),
     "Remove the BOM (U+FEFF) at the start of that line; a BOM is accepted at the start of a file only."),
    ("data-not-object", "data", "A line that is JSON but not an object (a list)",
     finetune_on(['["x: abc =>", "abc"]']),
     (_V, r"line 1: expected a JSON object per line, got list"),
     'ValueError: …/data/train.jsonl, line 1: expected a JSON object per line, got list.',
     "Write each record as an object: `{\"input\": \"...\", \"output\": \"...\"}`."),
    ("data-label-number", "data", "A record whose label is a number (`\"output\": 42`)",
     finetune_on([{"input": "x: 6*7 =>", "output": 42}]),
     (_V, r"line 1: field 'output' \(label_key\) is a JSON number .*quote numbers"),
     "ValueError: …/data/train.jsonl, line 1: field 'output' (label_key) is a JSON number (int: 42), not a string.",
     "Quote it: `\"output\": \"42\"`; every field the data uses is a JSON string."),
    ("data-missing-label", "data", "A record without the label field",
     finetune_on([{"input": "x: abc =>", "answer": "abc"}]),
     (_V, r"line 1: record has no label field 'output' \(keys present: \['answer', 'input'\]\)"),
     ('ValueError: …/data/train.jsonl, line 1: record has no label '
      "field 'output' (keys present: ['answer', 'input'])."),
     "Set `label_key` to the field holding the answer, or add the field."),
    ("data-missing-template-field", "data", "A record without a field the prompt template uses",
     finetune_on([{"question": "x: abc =>", "output": "abc"}]),
     (_V, r"prompt_template uses \{input\} but the record has no field 'input'"),
     ('ValueError: …/data/train.jsonl, line 1: prompt_template uses {input} but the '
      "record has no field 'input' (keys present: ['output', 'question'])."),
     "Fix the data or change `prompt_template` to the record's field names."),
    ("data-duplicate-key", "data", "A record with the same key twice",
     finetune_on(['{"input": "x: abc =>", "output": "abc", "output": "abd"}']),
     (_V, r"key 'output' appears more than once in the record"),
     ("ValueError: …/data/train.jsonl, line 1: key 'output' appears more than once "
      'in the record; JSON readers would keep only the last value.'),
     "Keep one of the two values."),
    ("data-empty-file", "data", "An empty data file",
     finetune_on(["", ""]),
     (_V, r"No records in .*the files are empty or only blank lines"),
     "ValueError: No records in ['…/data/train.jsonl']: the files are empty or only blank lines.",
     "Point `file_names` at JSONL files with one JSON object per line."),
    ("data-no-answer-tokens", "data", "Records whose answers are empty (and `add_eos=false`)",
     finetune_on([{"input": "x: abc =>", "output": ""}] * 8, "data.train_ds.add_eos=false",
                 "data.train_ds.prompt_template='{input}{output}'"),
     (_V, r"No example of data\.train_ds has a token to train on \(train: 8 of 8 examples kept.*8 with no trained "
          r"token.*examples/inspect_data\.py shows the trained tokens"),
     "ValueError: No example of data.train_ds has a token to train on (train: 8 of 8 examples kept; …",
     "Check `label_key` and that answers are non-empty and fit `max_seq_length`; "
     "`python examples/inspect_data.py` shows the trained tokens."),
    ("data-max-seq-length", "data", "A `max_seq_length` below 2",
     lambda tmp: finetune(tmp, "data.train_ds.max_seq_length=1"),
     (_V, r"max_seq_length=1 is too small: it must be at least 2"),
     'ValueError: max_seq_length=1 is too small: it must be at least 2.',
     "Set `max_seq_length` to fit a prompt and its answer (the default is 32)."),
    ("chat-unknown-role", "data", "A chat message with a role other than system, user or assistant (`\"tool\"`)",
     chat_finetune_on([HELLO, chat(("user", "6*7?"), ("tool", "42"), ("assistant", "42"))]),
     (_V, r"train\.jsonl, line 2, messages\[1\]: unknown role 'tool' in 'role'; valid: system, user, assistant"),
     ("ValueError: …/data/train.jsonl, line 2, messages[1]: unknown role 'tool' in 'role'; valid: system, user, "
      "assistant."),
     "Rename the role to system, user or assistant, or drop the message (tool turns are not supported)."),
    ("chat-no-assistant", "data", "A training conversation without an assistant turn",
     chat_finetune_on([HELLO, chat(("system", "Be brief."), ("user", "hi"))]),
     (_V, r"train\.jsonl, line 2: the conversation has no assistant turn.*put prompts without answers in predict_ds"),
     ("ValueError: …/data/train.jsonl, line 2: the conversation has no assistant turn, so there is nothing to train "
      "on or score; add an assistant message, or put prompts without answers in …"),
     "Add the assistant's answer, or move prompts without answers to `data.predict_ds`."),
    ("chat-content-not-string", "data", "A chat message whose content is not a string (a list of content parts)",
     chat_finetune_on([chat(("user", [{"type": "text", "text": "hi"}]), ("assistant", "hello"))]),
     (_V, r"line 1, messages\[0\]: field 'content' \(the user message's text\) is a JSON array"),
     ("ValueError: …/data/train.jsonl, line 1, messages[0]: field 'content' (the user message's text) is a JSON "
      "array (list: [{'type': 'text', 'text': 'hi'}]), not a string."),
     "Write each message's content as one string (join the text parts; quote numbers)."),
    ("chat-empty-messages", "data", "A chat record whose `messages` list is empty",
     chat_finetune_on([HELLO, {"messages": []}]),
     (_V, r"train\.jsonl, line 2: 'messages' is an empty list.*Remove the record or fill it"),
     ("ValueError: …/data/train.jsonl, line 2: 'messages' is an empty list; a conversation needs messages (at least "
      "a user turn and an assistant turn)."),
     "Remove the record or fill in its turns."),
    ("chat-mixed-formats", "data",
     "One file mixing chat formats (`messages` and ShareGPT `conversations`, `format=auto`)",
     chat_finetune_on([HELLO, {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}],
                      "data.train_ds.format=auto"),
     (_V, r"train\.jsonl, line 2: mixed formats: this record is sharegpt .* first record \(.*line 1\) is messages"),
     ("ValueError: …/data/train.jsonl, line 2: mixed formats: this record is sharegpt (it has 'conversations'), but "
      "the first record (…/data/train.jsonl, line 1) is messages."),
     "Convert the odd records to the first record's format, or put them in another split."),
    ("chat-template-syntax", "data", "A chat template file that is not valid Jinja (`chat_template_file`)",
     _chat_template_file_syntax_error,
     (_V, r"chat\.jinja is not valid Jinja: unexpected end of template.*\(template line 3: '\{% endfor'\)"),
     ("ValueError: The chat template from …/chat.jinja is not valid Jinja: unexpected end of template, expected "
      "'end of statement block'."),
     "Fix the template at the line the message names (here a `{% endfor` without `%}`)."),
    ("chat-template-undefined", "data", "A chat template that uses a variable nobody passes (`{{ date }}`)",
     chat_finetune_on([HELLO], template="Today is {{ date }}\n" + CHATML),
     (_V, r"uses the variable 'date' \(template line 1\), which is not defined.*\{% if date is defined %\}"),
     ("ValueError: …/data/train.jsonl, line 1: The chat template from the data config's chat_template uses the "
      "variable 'date' (template line 1), which is not defined."),
     "Remove the variable or guard it with `{% if date is defined %}`; templates get messages, "
     "add_generation_prompt, tools, documents and the special tokens."),
    ("chat-no-template", "data", "Chat data with a model whose tokenizer has no chat template, and none configured",
     chat_finetune_on([HELLO], template=None),
     (_V, r"Chat data \(format=messages, files \[.*train\.jsonl'\]\) needs a chat template, but the model's "
          r"tokenizer has none.*chat_template_file"),
     ("ValueError: Chat data (format=messages, files ['…/data/train.jsonl']) needs a chat template, but the model's "
      "tokenizer has none."),
     "Set `data.<split>_ds.chat_template` (a Jinja string) or `chat_template_file` on every chat split, or use a "
     "model that ships one."),
    ("data-parquet-no-pyarrow", "data", "A Parquet data file when pyarrow is not installed",
     _parquet_without_pyarrow,
     (ImportError, r"Reading .*train\.parquet' needs pyarrow: pip install 'nemo_peft\[parquet\]'"),
     ("ImportError: Reading '…/train.parquet' needs pyarrow: pip install 'nemo_peft[parquet]' (or pip install "
      "pyarrow), or convert the file to JSONL."),
     "`pip install 'nemo_peft[parquet]'` (or `pip install pyarrow`), or convert the file to JSONL."),
    ("data-packed-eval-split", "data",
     "Packing on a split other than train (`+data.validation_ds.packed_sequence=true`)",
     _packed_validation,
     (_V, r"validation_ds\.packed_sequence=true: packing is for training only.*Remove packed_sequence"),
     ("ValueError: validation_ds.packed_sequence=true: packing is for training only, evaluation and prediction read "
      "unpacked examples."),
     "Remove `packed_sequence` from that split; set it on `data.train_ds` only."),

    # ---- checkpoints, adapters and runs
    ("adapter-missing", "ckpt", "An adapter directory that does not exist (`model.peft.restore_from_path`)",
     lambda tmp: finetune(tmp, f"model.peft.restore_from_path={tmp / 'adaptr'}"),
     (FileNotFoundError, r"Adapter checkpoint .*adaptr' does not exist.*adapter_config\.json"),
     "FileNotFoundError: Adapter checkpoint '…/adaptr' does not exist.",
     "Pass the directory `save_adapters` (or a fine-tune's `exp_manager.adapter_dir`) wrote."),
    ("adapter-incomplete", "ckpt", "An adapter directory missing its weights file",
     _adapter_missing_file,
     (FileNotFoundError, r"adapter_weights\.safetensors' is missing: .* is not a complete adapter checkpoint"),
     ("FileNotFoundError: '…/adapter/adapter_weights.safetensors' is missing: "
      "'…/adapter' is not a complete adapter checkpoint written by save_adapters."),
     "Copy the whole directory (both files), or recover a run's adapter with `export.py --from-checkpoint`."),
    ("adapter-truncated", "ckpt", "A truncated adapter weights file (an interrupted copy)",
     _adapter_truncated,
     (_V, r"Cannot read .*adapter_weights\.safetensors.*damaged or truncated"),
     ("ValueError: Cannot read '…/adapter/adapter_weights.safetensors' (…); the file is damaged or "
      "truncated — save the adapter again."),
     "Copy or save the adapter again, or recover it with `export.py --from-checkpoint`."),
    ("adapter-config-damaged", "ckpt", "A damaged `adapter_config.json` (cut short)",
     _adapter_config_truncated,
     (_V, r"adapter_config\.json' is not valid JSON .*damaged or truncated"),
     "ValueError: '…/adapter/adapter_config.json' is not valid JSON (Expecting value: line 3 column 14 (char 40)).",
     "Copy or save the adapter again."),
    ("adapter-mixed-pair", "ckpt", "An adapter's config and weights from two different saves",
     _adapter_mixed_pair,
     (_V, r"adapter_weights\.safetensors' does not belong to .*adapter_config\.json'.*different saves"),
     ("ValueError: '…/adapter/adapter_weights.safetensors' does not belong to '…/adapter/adapter_config.json': "
      'its sha256 is … but the config records …, so the two files come from different saves …'),
     "Copy both files from one save (or save again); `export.py --from-checkpoint` recovers a run's adapter."),
    ("adapter-non-finite", "ckpt", "An adapter file holding NaN or inf values",
     _adapter_non_finite,
     (_V, r"Cannot load .*adapter_weights\.safetensors.*non-finite value\(s\) \(NaN/inf\).*lower the lr"),
     ("ValueError: Cannot load '…/adapter/adapter_weights.safetensors': adapter tensor "
      "'decoder.layers.0.self_attention.lora_qkv.adapters.default.lora_a' has 1 non-finite value(s) "
      "(NaN/inf) of 256; …"),
     "Retrain with a lower `model.optim.lr`, or resume from a good checkpoint."),
    ("adapter-unknown-method", "ckpt", "An adapter saved with a PEFT method this install does not know",
     _adapter_unknown_method,
     (_V, r"Unknown PEFT method 'my_lora'; known methods: .*Import the module that defines it"),
     ("ValueError: Unknown PEFT method 'my_lora'; known methods: ['adapter', 'dora', "
      "'ia3', 'lora', 'prefix_tuning', 'prompt_tuning', 'ptuning', 'qlora']."),
     "Import the module that registers the method before loading."),
    ("adapter-hf-peft-dir", "ckpt", "A Hugging Face PEFT directory given to `model.load_adapters`",
     _hf_peft_into_model_load,
     (_V, r"is a Hugging Face PEFT adapter \(peft_type='LORA'\); load it with nemo_peft\.load_adapters"),
     ("ValueError: '…/hf_adapter/adapter_config.json' is a Hugging Face PEFT adapter "
      "(peft_type='LORA'); load it with nemo_peft.load_adapters(model, path), which converts it, or …"),
     "Use `nemo_peft.load_adapters(model, path)`, which converts it."),
    ("adapter-path-is-file", "ckpt", "An adapter path that is a file, not the adapter directory",
     lambda tmp: tiny_gpt().load_adapters(str(saved_adapter(tmp) / "adapter_config.json")),
     (_V, r"Adapter path .* is a file; pass the adapter directory"),
     ("ValueError: Adapter path '…/adapter/adapter_config.json' is a file; pass the adapter directory that holds "
      "adapter_config.json and adapter_weights.safetensors (the directory save_adapters …"),
     "Pass the directory that holds both files."),
    ("adapter-other-base", "ckpt", "An adapter loaded onto another base model than it was trained on",
     lambda tmp: tiny_gpt(seed=1).load_adapters(str(saved_adapter(tmp))),
     (_V, r"was trained on another base model: .*hold other values.*strict_base=False"),
     ("ValueError: Adapter 'default' in '…/adapter' was trained on another base model: 9 of 9 host weights "
      "hold other values, e.g. <embedding> (adapter's base: GPTModel built in Python; this model: …"),
     "Load it onto its own base, or pass `strict_base=False` (`model.peft.strict_base=false`) to warn instead."),
    ("adapter-other-rank", "ckpt", "Loading an adapter with a config override of another rank",
     lambda tmp: tiny_gpt().load_adapters(str(saved_adapter(tmp)), cfg=lora(dim=2)),
     (_V, r"has shape \(8, 32\) but the model's is \(4, 32\); the adapter was made for another model or rank"),
     ("ValueError: Adapter tensor 'decoder.layers.0.self_attention.lora_qkv.adapters.default.lora_a' in "
      "'…/adapter' has shape (8, 32) but the model's is (4, 32); the adapter was made for another …"),
     "Drop the `cfg` override: the saved config describes the weights."),
    ("adapter-save-over-file", "ckpt", "Saving an adapter to a path that is a file",
     _save_over_file,
     (_V, r"is a file; an adapter is saved as a directory"),
     "ValueError: '…/adapter' is a file; an adapter is saved as a directory.",
     "Pass a directory path."),
    ("adapter-save-disk-full", "ckpt", "The disk fills up while an adapter is saved",
     _save_disk_full,
     (OSError, r"Could not write the adapter .* the filesystem is full .*unchanged.*--from-checkpoint"),
     ('OSError: [Errno 28] Could not write the adapter (adapter_weights.safetensors + '
      "adapter_config.json) to '…/adapter': the filesystem is full (OSError: …)."),
     "Free space or pick another directory; the adapter there before is unchanged."),
    ("run-disk-full", "ckpt", "Too little free space for the run's adapter and checkpoints",
     _run_disk_full,
     (OSError, r"has 1\.0 MB free but this run needs about .*Nothing was trained"),
     ("OSError: [Errno 28] '…/run' has 1.0 MB free but this run needs about 16.9 MB "
      'there (adapter 0.0 MB, checkpoint 0.1 MB, plus a margin).'),
     "Free space or pick another `exp_manager.output_dir`; nothing was trained."),
    ("run-output-dir-used", "ckpt", "Running again into the output_dir of a finished or killed run",
     _rerun_used_dir,
     (FileExistsError, r"already holds another run's adapter .* and checkpoints \(last\.ckpt\).*resume_if_exists=true"),
     ("FileExistsError: exp_manager.output_dir='…/run' already holds another "
      "run's adapter (…/run/adapter) and checkpoints (last.ckpt)."),
     "Set `exp_manager.resume_if_exists=true` to continue, `exp_manager.overwrite=true` to replace it, or use "
     "another `exp_manager.output_dir`."),
    ("run-locked", "ckpt", "A second run into an output_dir a live run is using",
     _lock(f"1 {socket.gethostname()}\n"),
     (RuntimeError, r"is in use by another run \(pid 1; lock file .*\.lock\)"),
     "RuntimeError: exp_manager.output_dir='…/run' is in use by another run (pid 1; lock file …/run/.lock).",
     "Wait for the other run or pick another `exp_manager.output_dir`; delete `.lock` only if no run uses it."),
    ("run-lock-left-by-kill", "ckpt", "The empty `.lock` of a run killed (`kill -9`) as it started",
     _lock(""),
     (RuntimeError, r"is in use by another run \(a run that is starting; lock file"),
     ("RuntimeError: exp_manager.output_dir='…/run' is in use by another "
      'run (a run that is starting; lock file …/run/.lock).'),
     "If no run is starting there, delete the `.lock` file (after 30 s it is taken over anyway)."),
    ("resume-missing", "ckpt", "Resuming from a checkpoint that does not exist",
     lambda tmp: finetune(tmp, f"exp_manager.resume_from_checkpoint={tmp / 'run' / 'checkpoints' / 'lats.ckpt'}"),
     (FileNotFoundError, r"resume_from_checkpoint=.*lats\.ckpt' does not exist"),
     ("FileNotFoundError: exp_manager.resume_from_checkpoint='…/run/checkpoints/lats.ckpt' does not exist; pass "
      "a .ckpt written by a previous run (its <output_dir>/checkpoints/last.ckpt) or 'last'."),
     "Pass a `.ckpt` of the run (`<output_dir>/checkpoints/last.ckpt`) or `last`."),
    ("resume-changed-peft", "ckpt", "Resuming with a changed adapter config (`model.peft.lora_tuning.alpha=8`)",
     _resume("model.peft.lora_tuning.alpha=8"),
     (_V, r"The checkpoint's adapters differ from this model's .*alpha: 32 -> 8.*same model\.peft config"),
     ("ValueError: The checkpoint's adapters differ from this model's (saved -> now): default (lora) alpha: "
      '32 -> 8 Resume with the same model.peft config as the run that saved the checkpoint; …'),
     "Resume with the `model.peft` config that wrote the checkpoint; trainer and optim options may change."),
    ("resume-other-base", "ckpt", "Resuming on another base model (`model.init_seed=1`)",
     _resume("model.init_seed=1"),
     (_V, r"The checkpoint's adapter 'default' was trained on another base model"),
     ("ValueError: The checkpoint's adapter 'default' was trained on another base model: 9 of 9 host weights "
      "hold other values, e.g. <embedding> (adapter's base: GPTModel built in Python; this …"),
     "Resume on the base model the run started from."),
    ("resume-non-finite", "ckpt", "Resuming from a checkpoint holding NaN/inf adapter weights",
     _resume_non_finite,
     (_V, r"Cannot resume from .*last\.ckpt.*non-finite value\(s\)"),
     ("ValueError: Cannot resume from '…/run/checkpoints/last.ckpt': adapter tensor "
      "'model.decoder.layers.0.self_attention.lora_qkv.adapters.default.lora_a' has 256 non-finite value(s) "
      "(NaN/inf) of …"),
     "Resume from an earlier checkpoint, or start again with a lower `model.optim.lr`."),
    ("lr-divergence", "ckpt", "Training diverges (`model.optim.lr=1e20`)",
     lambda tmp: finetune(tmp, "model.optim.lr=1e20", "model.optim.warmup_steps=0", "exp_manager.checkpoint=null"),
     (FloatingPointError, r"Training stopped in step 2 of 2 \(lr .*\): the loss is nan.*Lower model\.optim\.lr"),
     'FloatingPointError: Training stopped in step 2 of 2 (lr 5e+19): the loss is nan.',
     "Lower `model.optim.lr` (or add warmup) and resume from the last good checkpoint the message names."),
    ("model-missing", "ckpt", "A base model path that does not exist",
     lambda tmp: finetune(tmp, f"model.restore_from_path={tmp / 'SmolLM2.gguf'}", model="smollm2"),
     (FileNotFoundError, r"Model path .*SmolLM2\.gguf' does not exist"),
     "FileNotFoundError: Model path '…/SmolLM2.gguf' does not exist.",
     "Fix `model.restore_from_path` (a .gguf file, an HF or nemo_peft directory, or null for the default)."),
    ("model-no-config", "ckpt", "A base model directory without `config.json`",
     lambda tmp: (tmp / "model").mkdir() or load_pretrained(str(tmp / "model")),
     (_V, r"is not a model directory: it has no config\.json"),
     "ValueError: '…/model' is not a model directory: it has no config.json.",
     "Pass the directory `save_pretrained` (or `save_model`) wrote."),
    ("model-no-tokenizer", "ckpt", "A base model directory without `tokenizer.json`, in a recipe",
     _no_tokenizer,
     (_V, r"has no tokenizer\.json; the recipes need one"),
     "ValueError: '…/base' has no tokenizer.json; the recipes need one.",
     "Save the model with its tokenizer (`save_model(model, dir, tokenizer)`), or copy `tokenizer.json` in."),
    ("model-bin-only", "ckpt", "A Hugging Face checkpoint with only `pytorch_model.bin` weights",
     _hf_bin_only,
     (_V, r"no model\.safetensors.*found \['pytorch_model\.bin'\]: only safetensors weights are read"),
     ("ValueError: '…/hf_model' has a config.json but no model.safetensors or "
      "model.safetensors.index.json; found ['pytorch_model.bin']: only safetensors weights are read (re-save with …"),
     "Re-save it with `save_pretrained(dir, safe_serialization=True)`."),
    ("model-unsupported-type", "ckpt", "A Hugging Face checkpoint of an unsupported `model_type` (BERT)",
     _hf_model_type,
     (_V, r"model_type='bert' is not supported; supported: .*llama"),
     ("ValueError: '…/hf_model': model_type='bert' is not supported; "
      'supported: gpt2, llama, mistral, qwen2, t5, mt5.'),
     "Use a supported family (the message lists them)."),
    ("model-truncated", "ckpt", "A truncated `model.safetensors` in a nemo_peft model directory",
     _native_truncated,
     (_V, r"Cannot read .*model\.safetensors.*missing, damaged or truncated"),
     "ValueError: Cannot read '…/base/model.safetensors' (…); the file is missing, damaged or truncated.",
     "Copy or save the model again."),
    ("model-bad-gguf", "ckpt", "A damaged `.gguf` file (right magic, garbage after it)",
     lambda tmp: load_pretrained(str(_file("model.gguf", b"GGUF but not really")(tmp))),
     (_V, r"model\.gguf' is not a readable GGUF file"),
     "ValueError: '…/model.gguf' is not a readable GGUF file (ValueError: …).",
     "Download the file again."),
    ("model-not-gguf", "ckpt", "A model file that is not `.gguf`",
     lambda tmp: load_pretrained(str(_file("model.bin", b"\0" * 8)(tmp))),
     (_V, r"Model file .*model\.bin' is not a \.gguf file; pass a GGUF file or a model directory"),
     "ValueError: Model file '…/model.bin' is not a .gguf file; pass a GGUF file or a model directory.",
     "Pass a GGUF file or a model directory."),

    # ---- export and recovery
    ("export-hf-peft-model-type", "export", "HF-PEFT module names for a `model_type` the family lacks (`t5` for GPT)",
     lambda tmp: save_hf_peft(with_adapters(lora()), str(tmp / "hf_adapter"), "my/base", model_type="t5"),
     (_V, r"Cannot name modules for model_type 't5'; supported: gpt2, llama"),
     "ValueError: Cannot name modules for model_type 't5'; supported: gpt2, llama, mistral, qwen2.",
     "Use a `model_type` the message lists, or leave it unset (the base model's own)."),
    ("export-dora-hf-peft", "export", "Exporting a DoRA adapter as HF PEFT",
     lambda tmp: save_hf_peft(with_adapters(DoraPEFTConfig(target_modules=["q_proj"], dim=2)),
                              str(tmp / "hf_adapter"), "my/base"),
     (_V, r"is DoraAdapter; only LoRA adapters can be written in the Hugging Face PEFT format"),
     ("ValueError: Adapter 'default' at decoder.layers.0.self_attention.lora_qkv is "
      'DoraAdapter; only LoRA adapters can be written in the Hugging Face PEFT format.'),
     "Export LoRA adapters only; merge a DoRA adapter into the base instead (`examples/merge.py`)."),
    ("export-merge-model-type", "export",
     "`merge.py --model-type gpt2` for a Llama-style model (a `model_type` that cannot hold it)",
     _merge_as("gpt2"),
     (_V, r"cannot be exported as model_type 'gpt2': gpt2 needs learned absolute positions and LayerNorm"),
     ("ValueError: This model cannot be exported as model_type 'gpt2': gpt2 needs learned absolute positions "
      'and LayerNorm; gpt2 has no gated MLP; gpt2 needs head_dim = hidden/heads and no GQA.'),
     "Leave `--model-type` unset (the model's own family) or pick one the message allows."),
    ("export-two-adapters", "export", "`export.py --to-hf-peft` on a directory holding several adapters",
     _to_hf_peft_two_adapters,
     (_V, r"holds adapters \['a', 'b'\]; pick one with --name"),
     "ValueError: '…/adapter' holds adapters ['a', 'b']; pick one with --name.",
     "Pass `--name` with one of the adapter names."),
    ("import-hf-peft-type", "export", "Importing an HF PEFT adapter that is not LoRA (`peft_type` IA3)",
     _from_hf_peft(change={"peft_type": "IA3"}),
     (_V, r"peft_type='IA3' is not supported; only 'LORA' adapters"),
     ("ValueError: …/hf_adapter/adapter_config.json: peft_type='IA3' is "
      "not supported; only 'LORA' adapters can be loaded."),
     "Convert LoRA adapters only."),
    ("import-hf-peft-dora", "export", "Importing an HF PEFT LoRA trained with `use_dora`",
     _from_hf_peft(change={"use_dora": True}),
     (_V, r"use_dora=True is not supported"),
     ('ValueError: …/hf_adapter/adapter_config.json: use_dora=True is not supported; '
      'only plain LoRA (with use_dora unset) can be loaded exactly.'),
     "Convert plain LoRA adapters only."),
    ("import-hf-peft-no-weights", "export", "An HF PEFT directory without its weights file",
     _from_hf_peft(drop_weights=True),
     (FileNotFoundError, r"has adapter_config\.json but no adapter_model\.safetensors"),
     ("FileNotFoundError: '…/hf_adapter' has adapter_config.json but no "
      'adapter_model.safetensors (or adapter_model.bin).'),
     "Copy the whole adapter directory."),
    ("from-checkpoint-missing", "export", "`export.py --from-checkpoint` with a path that does not exist",
     lambda tmp: export_py("--from-checkpoint", tmp / "run" / "checkpoints" / "lats.ckpt", "--output", tmp / "ad"),
     (FileNotFoundError, r"Checkpoint .*lats\.ckpt' does not exist; pass a \.ckpt written by examples/finetune\.py"),
     ("FileNotFoundError: Checkpoint '…/run/checkpoints/lats.ckpt' does not exist; pass a .ckpt "
      'written by examples/finetune.py, e.g. <output_dir>/checkpoints/last.ckpt.'),
     "Pass `<output_dir>/checkpoints/last.ckpt` of the run."),
    ("from-checkpoint-damaged", "export", "`export.py --from-checkpoint` with a truncated checkpoint",
     _from_checkpoint_truncated,
     (_V, r"Cannot read .*last\.ckpt' as a Lightning checkpoint"),
     ("ValueError: Cannot read '…/run/checkpoints/last.ckpt' as a Lightning checkpoint "
      '(RuntimeError: …); it is damaged or not a checkpoint of examples/finetune.py.'),
     "Use another checkpoint of the run (or the saved adapter)."),
    ("from-checkpoint-foreign", "export", "`export.py --from-checkpoint` with a checkpoint of another program",
     _from_checkpoint_foreign,
     (_V, r"holds no nemo_peft adapter \(no 'nemo_peft_adapters' configs or no 'state_dict'\)"),
     ("ValueError: '…/other.ckpt' holds no nemo_peft adapter (no 'nemo_peft_adapters' configs "
      "or no 'state_dict'); pass a checkpoint written by examples/finetune.py."),
     "Pass a checkpoint written by `examples/finetune.py`."),
    ("from-checkpoint-output-used", "export", "`export.py --from-checkpoint` into a directory that holds an adapter",
     _from_checkpoint_into_used,
     (FileExistsError, r"already holds an adapter; pass --overwrite to replace it"),
     ("FileExistsError: '…/run/adapter' already holds an adapter; pass --overwrite to replace it "
      '(the old one stays until the new one is complete) or pick another --output.'),
     "Add `--overwrite` (the old adapter stays until the new one is complete) or pick another `--output`."),
]

CATALOGUE: list[Entry] = [Entry(id, group, what, trigger, expected, shown, fix)
                          for id, group, what, trigger, expected, shown, fix in _CATALOGUE_SPEC]
