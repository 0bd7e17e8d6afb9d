"""The ``nemo-peft`` command: our own help (config groups and their options, the most used overrides),
clear errors, the Hydra commands run from outside the checkout on the packaged configs, and a wheel
that carries the configs and the bundled data."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from nemo_peft.cli.config_groups import config_dir, options
from tests.helpers import ROOT


def nemo_peft_cmd(*args, cwd, timeout=600):
    """``python -m nemo_peft ARGS`` (what the console script runs) in ``cwd``."""
    return subprocess.run([sys.executable, "-m", "nemo_peft", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_commands_groups_and_their_options(tmp_path):
    res = nemo_peft_cmd("--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for command in ("finetune", "estimate", "generate", "merge", "export", "inspect-data"):
        assert f"\n  {command} " in out
    assert "model (model=NAME): smollm2* | t5 | tiny" in out
    assert "trainer (trainer=NAME): cpu* | ddp | fsdp | gpu" in out
    from nemo_peft.peft.base import PEFT_METHODS

    peft_line = next(line for line in out.splitlines() if line.startswith("  peft ("))
    listed = {o.strip().rstrip("*") for o in peft_line.split(":", 1)[1].split("|")}
    assert listed == set(PEFT_METHODS), "the peft options are exactly the registered methods"
    assert "sections" not in out and "Powered by Hydra" not in out


def test_command_help_shows_the_most_used_overrides(tmp_path):
    res = nemo_peft_cmd("finetune", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for line in ("trainer.max_steps=100", "model.peft.peft_scheme=lora", "model.peft.lora_tuning.dim=16",
                 "model.activations_checkpoint_granularity=null", "+estimate_only=true", "peft (model.peft.peft_scheme"):
        assert line in res.stdout
    assert "Powered by Hydra" not in res.stdout
    for command in ("generate", "inspect-data", "estimate"):
        res = nemo_peft_cmd(command, "-h", cwd=tmp_path)
        assert res.returncode == 0 and f"usage: nemo-peft {command}" in res.stdout
    res = nemo_peft_cmd("merge", "--help", cwd=tmp_path)
    assert res.returncode == 0 and "--adapter" in res.stdout and "nemo-peft merge" in res.stdout


def test_the_examples_are_the_same_command(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "finetune.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert res.returncode == 0 and "usage: nemo-peft finetune" in res.stdout


@pytest.mark.parametrize("args,message", [
    (["fintune"], "unknown command 'fintune' (did you mean 'finetune'?); valid commands: finetune, estimate, "
                  "generate, inspect-data, merge, export"),
    (["finetune", "+estimate_only=maybe"], "estimate_only takes true or false"),
    (["estimate", "--cfg", "job"], "Hydra flags (--cfg) do not apply to an estimate"),
    (["finetune", "model.peft.peft_scheme=loraa"], "loraa"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    res = nemo_peft_cmd(*args, cwd=tmp_path)
    assert res.returncode != 0
    assert message in res.stderr


@pytest.mark.parametrize("command", [["finetune"], ["finetune", "+estimate_only=true"], ["estimate"]])
def test_a_config_hydra_rejects_is_reported_before_lightning_is_imported(tmp_path, command):
    """The recipe (and Lightning, seconds to import) loads only once Hydra has composed the config."""
    code = ("import atexit, sys; from nemo_peft.cli import main; "  # atexit: Hydra's main exits on an error
            "atexit.register(lambda: print('lightning imported:', 'lightning' in sys.modules)); sys.exit(main(sys.argv[1:]))")
    res = subprocess.run([sys.executable, "-c", code, *command, "model.not_a_key=1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode != 0 and "not_a_key" in res.stderr, res.stderr[-2000:]
    assert "lightning imported: False" in res.stdout


def test_config_groups_come_from_the_yaml_files():
    assert config_dir() == os.path.join(ROOT, "conf")
    assert set(options("peft")) == {f[:-5] for f in os.listdir(os.path.join(ROOT, "conf", "peft")) if f.endswith(".yaml")}
    assert options("model")["tiny"].startswith("A tiny random Llama-style model")


@pytest.mark.skipif(shutil.which("nemo-peft") is None, reason="nemo_peft is not pip-installed here")
def test_the_console_script_answers_from_anywhere(tmp_path):
    res = subprocess.run(["nemo-peft", "finetune", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and "trainer.max_steps=100" in res.stdout


def test_finetune_runs_outside_the_checkout_on_the_packaged_configs(tmp_path):
    """``nemo-peft finetune model=tiny trainer.max_steps=5``: the default (bundled) data, from another directory."""
    out = tmp_path / "x"
    res = nemo_peft_cmd("finetune", "model=tiny", "trainer.max_steps=5", f"exp_manager.output_dir={out}",
                        "trainer.enable_progress_bar=false", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "held-out exact match: before" in res.stdout
    assert (out / "adapter" / "adapter_weights.safetensors").is_file()
    logs = list((out / "hydra").glob("*/finetune.log"))
    assert logs, "Hydra's job keeps the example's name"
    assert not (tmp_path / "results").exists() and not (tmp_path / "outputs").exists()


def test_the_wheel_carries_the_configs_and_the_bundled_data(tmp_path):
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(os.path.join(ROOT, "nemo_peft"), src / "nemo_peft", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "conf"), src / "conf")
    shutil.copy(os.path.join(ROOT, "setup.py"), src / "setup.py")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = next(tmp_path.glob("nemo_peft-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
            for d, _, files in os.walk(os.path.join(ROOT, "conf")) for f in files if f.endswith(".yaml")}
    assert {f"nemo_peft/{c}" for c in conf} <= names
    assert "nemo_peft/data/bundled/date_reformat/train.jsonl" in names
    assert "nemo_peft/cli/__init__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "nemo-peft = nemo_peft.cli:console" in zipfile.ZipFile(wheel).read(entry_points).decode()
