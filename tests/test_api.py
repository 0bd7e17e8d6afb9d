"""The Python API: every config class and the Lightning pieces import from ``nemo_peft`` itself, lazily;
and the README's "Train from Python" example runs (read from README.md, so the two cannot drift)."""
import os
import re
import subprocess
import sys

import pytest

import nemo_peft
from tests.helpers import ROOT

NAMES = ["LoraPEFTConfig", "IA3PEFTConfig", "PtuningPEFTConfig", "CanonicalAdaptersPEFTConfig", "DoraPEFTConfig",
         "QLoraPEFTConfig", "PromptTuningPEFTConfig", "PrefixTuningPEFTConfig", "PEFTConfig", "GPTSFTModel",
         "T5SFTModel", "SFTModule", "SFTDataModule", "Seq2SeqDataModule", "GPTModel", "GPTConfig", "T5Model",
         "T5Config", "load_gguf", "load_hf", "load_hf_t5", "load_pretrained", "AdapterDDPStrategy",
         "AdapterFSDPStrategy", "ThroughputMonitor", "Tokenizer", "bundled_path", "run_finetune", "estimate_finetune"]


def test_import_nemo_peft_loads_neither_torch_nor_lightning():
    code = "import sys, nemo_peft; print(sorted(m for m in ('torch', 'lightning', 'hydra') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", NAMES)
def test_the_name_imports_from_the_top(name):
    assert name in nemo_peft.__all__ and name in dir(nemo_peft)
    obj = getattr(nemo_peft, name)
    assert obj is not None and (callable(obj) or isinstance(obj, dict))


def test_every_registered_method_and_every_export_is_there():
    from nemo_peft.peft import __all__ as peft_all
    from nemo_peft.peft.base import PEFT_METHODS

    assert {cls.__name__ for cls in PEFT_METHODS.values()} <= set(peft_all) <= set(nemo_peft.__all__)
    for name in nemo_peft.__all__:
        assert getattr(nemo_peft, name) is not None, name
    namespace = {}
    exec("from nemo_peft import *", namespace)
    assert {"IA3PEFTConfig", "SFTDataModule", "GPTSFTModel"} <= set(namespace)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'LoRAConfig'"):
        nemo_peft.LoRAConfig  # noqa: B018
    with pytest.raises(ImportError):
        exec("from nemo_peft import NotAPEFTConfig", {})


# ---- the README's example ----
def readme_example() -> str:
    """The python block under "### Train from Python" in README.md."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("### Train from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def tiny_model():
    """The tiny random model of ``model=tiny`` (byte-level tokenizer, no files)."""
    from omegaconf import OmegaConf

    from nemo_peft.recipes.build import load_base

    conf = OmegaConf.load(os.path.join(ROOT, "conf", "model", "tiny.yaml"))
    return load_base(OmegaConf.create({"arch": "gpt", "from_scratch": conf.from_scratch, "init_seed": 0}))


def test_readme_train_from_python_runs(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) < 20, "the README promises under 20 lines"
    assert code.count("load_pretrained(None)") == 1
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example", "_tiny_model": tiny_model}
    exec(compile(code.replace("load_pretrained(None)", "_tiny_model()"), "README.md", "exec"), namespace)
    assert namespace["trainer"].global_step == 100
    assert (tmp_path / "my_adapter" / "adapter_weights.safetensors").is_file()
    printed = capsys.readouterr().out  # the example prints trainer.test's metrics
    assert "'test_loss'" in printed and "'test_exact_match'" in printed
