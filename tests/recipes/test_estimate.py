"""The pre-flight estimate: printed before any training, nothing written, close to what a real run measures
(tiny model, loose bounds; the default model's figures are in benchmarks/bench_estimate.py's output), and a
probe that leaves the module as it found it."""
import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import ROOT

TINY = ["model=tiny", "trainer.enable_progress_bar=false", "trainer.num_threads=1"]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nemo_peft", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("how", [["finetune", "+estimate_only=true"], ["estimate"], ["estimate", "estimate=false"]])
def test_estimate_only_prints_the_estimate_and_writes_nothing(tmp_path, how):
    out = tmp_path / "run"
    res = run_cli(how[0], *TINY, "trainer.max_steps=7", f"exp_manager.output_dir={out}", *how[1:], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout
    for key in ("pre-flight estimate", "trainable parameters  26,624 of 117,248", "adapter on disk",
                "peak memory           CPU RSS", "time per step", "whole run             about", "7 steps x",
                f"nothing was trained and {out} was not touched"):
        assert key in lines, key
    # the run's banner repeats this estimate, so its whole-run time counts it, unless estimate=false
    assert ("the banner's estimate" in lines) == ("estimate=false" not in how), lines
    assert "held-out exact match" not in lines  # no training, no evaluation of a trained adapter
    assert not out.exists()
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_the_estimate_is_close_to_a_real_run(tmp_path):
    """benchmarks/bench_estimate.py on the tiny model: each side in a fresh process."""
    script = os.path.join(ROOT, "benchmarks", "bench_estimate.py")
    res = subprocess.run([sys.executable, script, "--", *TINY, "trainer.max_steps=25",
                          f"exp_manager.output_dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT ") and '"label"' in x)
    est, run = json.loads(line[7:])["estimate"], json.loads(line[7:])["run"]
    assert est["steps"] == run["steps"] == 25
    assert 0.5 * run["peak_mib"] <= est["peak_mib"] <= 1.5 * run["peak_mib"], (est, run)
    assert abs(est["increase_mib"] - run["increase_mib"]) <= max(0.5 * run["increase_mib"], 48), (est, run)
    assert 0.5 * run["step_s"] <= est["step_s"] <= 1.5 * run["step_s"], (est, run)


def test_the_probe_leaves_the_module_as_it_was(tmp_path):
    """What finetune.py's banner relies on: weights, modes, counters and random generators are restored."""
    from nemo_peft.cli.hydra_command import compose
    from nemo_peft.recipes.build import build_model
    from nemo_peft.recipes.estimate import estimate_finetune

    cfg = compose("finetune", [*TINY, "trainer.max_steps=3", f"exp_manager.output_dir={tmp_path / 'run'}",
                               "model.peft.lora_tuning.dropout=0.1"])
    module = build_model(cfg.model)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.01)  # LoRA's B starts at zero: make every weight something a step would change
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    modes = [m.training for m in module.modules()]
    rng = torch.get_rng_state()
    est = estimate_finetune(cfg, module)
    assert est.trainable == 26_624 and est.probe.step_seconds
    assert all(torch.equal(before[n], p) for n, p in module.named_parameters())
    assert all(p.grad is None for p in module.parameters())
    assert [m.training for m in module.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert module._trainer is None and float(module._window.abs().sum()) == 0
    assert not (tmp_path / "run").exists()


def test_arithmetic_of_steps_and_validation_passes():
    from nemo_peft.recipes.estimate import total_steps, validation_passes

    cfg = OmegaConf.create({"max_steps": 100, "max_epochs": -1})
    assert total_steps(cfg, epoch_batches=250, accumulate=1) == 100
    assert total_steps(OmegaConf.create({"max_steps": -1, "max_epochs": 2}), 250, 2) == 250
    assert total_steps(OmegaConf.create({"max_steps": -1, "max_epochs": -1}), 250, 1) is None
    assert validation_passes(OmegaConf.create({"limit_val_batches": 0}), 100, 250, 1) == 0
    assert validation_passes(OmegaConf.create({"val_check_interval": 20, "check_val_every_n_epoch": None}),
                             100, 250, 1) == 5
    assert validation_passes(OmegaConf.create({"val_check_interval": None}), 500, 250, 1) == 2


def test_the_banner_estimate_leaves_the_run_unchanged(tmp_path, caplog):
    """finetune.py prints the estimate in its banner (estimate=true, the default); the probe runs on a throwaway
    copy of the state, so the trained adapter is bitwise the one of a run with estimate=false."""
    import logging

    from safetensors.torch import load_file

    from nemo_peft.cli.hydra_command import compose
    from nemo_peft.recipes.finetune import run_finetune

    weights = {}
    for estimate in (True, False):
        out = tmp_path / f"run_{estimate}"
        cfg = compose("finetune", [*TINY, "trainer.max_steps=6", f"exp_manager.output_dir={out}", "eval_before=false",
                                   "model.peft.lora_tuning.dropout=0.1", f"estimate={str(estimate).lower()}"])
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nemo_peft"):
            result = run_finetune(cfg)
        said = caplog.text
        assert ("pre-flight estimate" in said) == estimate, said[-2000:]
        assert ("time per step" in said) == estimate
        weights[estimate] = load_file(os.path.join(result["adapter_dir"], "adapter_weights.safetensors"))
    assert weights[True].keys() == weights[False].keys()
    assert all(torch.equal(weights[True][k], weights[False][k]) for k in weights[True])
    assert any(float(v.abs().sum()) > 0 for k, v in weights[True].items() if k.endswith(".lora_b"))  # it trained
