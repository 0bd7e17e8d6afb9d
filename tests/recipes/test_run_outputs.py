"""What a fine-tune run leaves behind and says: metrics.csv and loss.png by default, TensorBoard event files on
request, the Hydra job log, a console free of third-party noise, plot_metrics.py, and the precision advice."""
import csv
import glob
import os
import re
import sys

import pytest
from omegaconf import OmegaConf

from nemo_peft.recipes import finetune as ft
from nemo_peft.recipes import precision_advice
from nemo_peft.recipes.loggers import FlatCSVLogger, build_loggers, trainer_logger
from nemo_peft.recipes.plots import draw_loss, read_metrics
from tests.error_catalogue import hydra_config
from tests.helpers import ROOT, run_example

NOISE = ("module(s) in eval mode", "litlogger", "LeafSpec", "Epoch 0/-2", "lr: 0.000")
PNG = b"\x89PNG\r\n\x1a\n"


def task_args(tiny_task, out, *extra):
    return ["model=tiny", f"exp_manager.output_dir={out}", "model.optim.lr=5e-3", "model.peft.lora_tuning.dim=4",
            f"data.train_ds.file_names=[{tiny_task['train']}]", f"data.test_ds.file_names=[{tiny_task['test']}]",
            "data.validation_ds=null", "+data.test_ds.max_num_samples=8", *extra]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """The tiny model saved in our format: loaders return models in eval mode, as the default GGUF does."""
    from nemo_peft import save_model
    from nemo_peft.recipes.build import load_base

    model, tokenizer = load_base(hydra_config("model=tiny").model)
    directory = tmp_path_factory.mktemp("base") / "tiny"
    save_model(model, str(directory), tokenizer)
    return directory


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, saved_tiny, module_tiny_task):
    """examples/finetune.py as a user runs it (progress bar on), 10 steps of a loaded tiny base."""
    tiny_task = module_tiny_task
    tmp = tmp_path_factory.mktemp("default")
    out = tmp / "run"
    res = run_example("finetune.py", *task_args(tiny_task, out, "trainer.max_steps=10", "model.from_scratch=null",
                                                f"model.restore_from_path={saved_tiny}"), cwd=tmp)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return out, res


@pytest.fixture(scope="module")
def module_tiny_task(tmp_path_factory):
    import json
    import random

    tmp = tmp_path_factory.mktemp("task")
    rng = random.Random(0)
    rows = [{"input": f"x: {w} =>", "output": w}
            for w in ("".join(rng.choice("abcd") for _ in range(3)) for _ in range(48))]
    paths = {}
    for split, part in (("train", rows[:32]), ("test", rows[32:])):
        paths[split] = str(tmp / f"{split}.jsonl")
        with open(paths[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return paths


def test_default_run_writes_metrics_csv_with_its_steps_and_a_loss_png(default_run):
    out, res = default_run
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r.get("train_loss")]
    assert [s for s, _ in train] == [4, 9]  # trainer.log_every_n_steps=5 of 10 steps (Lightning counts from 0)
    for key in ("lr", "grad_norm", "tokens_per_s", "trained_tokens", "peak_mem_mib"):
        assert all(float(r[key]) > 0 for r in rows if r.get("train_loss")), key
    tests = {int(r["step"]): float(r["test_exact_match"]) for r in rows if r.get("test_exact_match")}
    assert sorted(tests) == [0, 10]  # held-out exact match before and after training
    assert not glob.glob(str(out / "lightning_logs")) and not (out / "hparams.yaml").exists()
    png = out / "loss.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
    assert f"loss curve   {png}" in res.stdout


def test_default_run_console_is_clean_and_readable(default_run):
    _, res = default_run
    console = res.stdout + res.stderr
    for noise in NOISE:
        assert noise not in console, (noise, console[-3000:])
    assert "step 10/10" in res.stdout
    assert re.search(r"lr: \d\.\de-0\d", res.stdout), res.stdout[-2000:]  # the progress bar's lr, e.g. 5.5e-04
    assert "AdamW lr 5.0e-03" in res.stdout
    banner = res.stdout.splitlines()[:8]
    assert any(line.startswith("model: GPTModel") for line in banner) and any("LoraPEFTConfig" in l for l in banner)
    assert re.search(r"^finished in \d+ s \(training \d+ s, 10 optimizer steps\)$", res.stdout, re.M)


def test_hydra_job_log_holds_the_runs_messages(default_run):
    out, res = default_run
    logs = glob.glob(str(out / "hydra" / "*" / "finetune.log"))
    assert len(logs) == 1 and os.path.getsize(logs[0]) > 0
    text = open(logs[0]).read()
    assert "held-out exact match: before" in text and "trainable params" in text and "train: 32 of 32" in text
    assert f"log          {logs[0]}" in res.stdout
    assert res.stdout.count("held-out exact match") == 1  # printed once, not once per handler


def test_tensorboard_event_files_hold_the_train_loss(tmp_path, module_tiny_task):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = ft.run_finetune(hydra_config(*task_args(
        module_tiny_task, out, "trainer.max_steps=4", "trainer.log_every_n_steps=1", "eval_before=false",
        "exp_manager.create_tensorboard_logger=true", "exp_manager.create_csv_logger=false",
        "trainer.enable_progress_bar=false", "exp_manager.checkpoint=null")))
    assert result["files"]["tensorboard"] == str(out / "tensorboard")
    assert glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train_loss", "lr", "tokens_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train_loss")] == [0, 1, 2, 3]
    assert not (out / "metrics.csv").exists() and not (out / "loss.png").exists()


def test_plot_metrics_overlays_two_runs(tmp_path):
    for name, scale in (("lora", 1.0), ("ia3", 2.0)):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "metrics.csv", "w") as f:
            f.write("epoch,lr,step,test_exact_match,train_loss\n0,,0,0.0,\n")
            f.writelines(f"0,0.001,{s},,{scale * 3 / (s + 1)}\n" for s in range(10))
            f.write("0,,10,90.0,\n")
    res = run_example("plot_metrics.py", str(tmp_path / "lora" / "metrics.csv"), str(tmp_path / "ia3"),
                      "--out", str(tmp_path / "cmp.png"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cmp.png").read_bytes()[:8] == PNG and f"wrote {tmp_path / 'cmp.png'}" in res.stdout
    bad = run_example("plot_metrics.py", str(tmp_path / "nope.csv"), cwd=tmp_path)
    assert bad.returncode != 0 and "no such metrics.csv" in bad.stderr


def test_a_resumed_csv_appends_and_the_last_value_of_a_step_wins(tmp_path):
    first = FlatCSVLogger(str(tmp_path))
    first.log_metrics({"train_loss": 2.0}, step=0)
    first.log_metrics({"train_loss": 1.5}, step=1)
    resumed = FlatCSVLogger(str(tmp_path))
    resumed.append = True
    resumed.log_metrics({"train_loss": 1.4, "grad_norm": 0.5}, step=1)  # a new column, a replayed step
    assert read_metrics(str(tmp_path / "metrics.csv")) == {"train_loss": [(0, 2.0), (1, 1.4)],
                                                           "grad_norm": [(1, 0.5)]}
    fresh = FlatCSVLogger(str(tmp_path))  # a new run replaces the file
    fresh.log_metrics({"train_loss": 9.0}, step=0)
    assert read_metrics(str(tmp_path / "metrics.csv")) == {"train_loss": [(0, 9.0)]}


def test_without_matplotlib_the_run_says_so_in_one_line(tmp_path, monkeypatch):
    logger = FlatCSVLogger(str(tmp_path))
    logger.log_metrics({"train_loss": 2.0}, step=0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    trainer = type("T", (), {"loggers": [logger]})()
    png, note = draw_loss(trainer, logger.metrics_path, str(tmp_path / "loss.png"))
    assert png is None and note == "loss.png not drawn: drawing loss curves needs matplotlib: pip install matplotlib"


@pytest.mark.parametrize("key,package", [("create_wandb_logger", "wandb"), ("create_mlflow_logger", "mlflow"),
                                         ("create_tensorboard_logger", "tensorboard")])
def test_an_optional_logger_that_is_not_installed_names_the_pip_command(tmp_path, monkeypatch, key, package):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in (package, "tensorboardX") else real(name, *a))
    em = OmegaConf.create({key: True})
    with pytest.raises(ModuleNotFoundError, match=re.escape(f"exp_manager.{key}=true needs the {package} package, "
                                                            f"which is not installed: pip install {package}")):
        build_loggers(em, str(tmp_path), "run")


@pytest.mark.parametrize("value,new", [("csv", "exp_manager.create_csv_logger=true"),
                                       ("tensorboard", "exp_manager.create_tensorboard_logger=true"),
                                       (True, "exp_manager.create_csv_logger (on by default)")])
def test_old_trainer_logger_values_name_the_new_keys(value, new):
    with pytest.raises(ValueError, match=re.escape(new)):
        trainer_logger(value, [])
    assert trainer_logger(False, ["a logger"]) is False and trainer_logger(None, []) is False


def test_bf16_on_a_cpu_where_it_is_slower_says_so(tmp_path, module_tiny_task, monkeypatch, capsys):
    monkeypatch.setattr(precision_advice, "bf16_speed_ratio", lambda model, rows, mixed=True: 0.21)
    ft.run_finetune(hydra_config(*task_args(module_tiny_task, tmp_path / "run", "trainer.max_steps=1",
                                            "eval_before=false", "model.eval_exact_match=false",
                                            "trainer.precision=bf16-mixed", "trainer.enable_progress_bar=false",
                                            "exp_manager.checkpoint=null")))
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("bf16 matmuls"))
    assert line.startswith("bf16 matmuls run 0.21x the speed of fp32 on this CPU (")
    assert line.endswith("training will be slower than fp32; use trainer.precision=32")


def test_the_bf16_probe_is_short_and_measures_the_models_shape():
    import time

    import torch

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64))
    assert precision_advice.largest_linear(model) == (64, 256)
    start = time.perf_counter()
    ratio = precision_advice.bf16_speed_ratio(model, rows=256)
    assert ratio > 0 and time.perf_counter() - start < 1.5
    assert precision_advice.advice("32-true", "cpu", model, 256) is None
    assert precision_advice.advice("bf16-mixed", "gpu", model, 256) is None


def test_a_run_resumed_after_a_crash_continues_metrics_csv_at_the_right_steps(tmp_path, module_tiny_task):
    """Killed after step 3 (last.ckpt at step 2), then resumed: the resumed run appends its rows at the steps it
    trains and its trained-token count continues from the checkpoint's. (Under DDP, where Lightning restores
    its logging step one short, test_scale_out's resume tests check the steps line up.)"""
    import subprocess

    out = tmp_path / "run"
    common = task_args(module_tiny_task, out, "trainer.max_steps=6", "eval_before=false", "model.eval_exact_match=false",
                       "data.test_ds=null", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
                       "exp_manager.checkpoint.every_n_train_steps=2", "data.train_ds.micro_batch_size=4",
                       "model.global_batch_size=8")
    crash = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "recipes", "finetune_killed.py"), *common],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "KILL_AT_STEP": "3"})
    assert crash.returncode != 0 and (out / "checkpoints" / "last.ckpt").is_file(), crash.stderr[-2000:]
    resumed = run_example("finetune.py", *common, "exp_manager.resume_if_exists=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r.get("train_loss")]
    steps = [int(r["step"]) for r in rows]
    assert steps[:2] == [0, 1] and steps[-4:] == [2, 3, 4, 5], steps  # the crashed run's rows, then the resumed
    tokens = [float(r["trained_tokens"]) for r in rows]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)  # the count continues
