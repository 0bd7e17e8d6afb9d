"""Fine-tunes through the recipe (examples/finetune.py's run_finetune) in child processes that a
test can SIGKILL at a chosen point.

Children fork from a forkserver that has imported the recipes once, so a run costs its training
time rather than the ~10 s Lightning import. Each child appends ``[global_step, loss]`` per step
to ``log`` and its traceback, if it fails, to ``log + ".err"``.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import traceback
import warnings

import lightning as L
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, EVERY = 12, 2  # 32 samples / micro batch 8 = 4 steps an epoch: epochs end at steps 4, 8, 12


def overrides(task, out, *extra, steps=STEPS):
    """Hydra overrides for a fast tiny-model LoRA run on ``task`` (the tiny_task fixture)."""
    return ["model=tiny", f"exp_manager.output_dir={out}", f"trainer.max_steps={steps}", "eval_before=false",
            "model.eval_exact_match=false", f"data.train_ds.file_names=[{task['train']}]",
            f"data.test_ds.file_names=[{task['test']}]", "data.train_ds.micro_batch_size=8",
            "trainer.enable_progress_bar=false", "trainer.num_threads=1",
            f"exp_manager.checkpoint.every_n_train_steps={EVERY}", "model.optim.lr=5e-3",
            "model.optim.warmup_steps=2", "model.peft.lora_tuning.dim=4",
            "model.peft.lora_tuning.dropout=0.1",  # dropout: the restored RNG state matters
            *extra]


class Killer(L.Callback):
    """Logs (global_step, loss) per step; SIGKILLs this process at ``kill`` = (when, step):
    "step" after that optimizer step (before its checkpoint), "in_save" once last.ckpt's temp
    file is written but not yet renamed, "after_save" right after the rename."""

    def __init__(self, kill, log_path):
        self.kill, self.log_path, self.trainer = kill, log_path, None

    def setup(self, trainer, pl_module, stage):
        self.trainer = trainer

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.log_path, "a") as f:
            f.write(json.dumps([trainer.global_step, float(outputs["loss"])]) + "\n")
        self.maybe_kill("step")

    def maybe_kill(self, when):
        if self.kill == (when, self.trainer.global_step):
            os.kill(os.getpid(), signal.SIGKILL)


def _child(args, kill, log):
    try:
        from hydra import compose, initialize_config_dir

        import nemo_peft.recipes.finetune as ft
        from nemo_peft.recipes.hydra_args import register_resolvers

        warnings.filterwarnings("error", message=".*not resumable.*")  # Lightning's mid-epoch resume warning
        killer = Killer(kill, log)
        build_trainer, replace = ft.build_trainer, os.replace

        def build_with_killer(*a, **k):
            trainer = build_trainer(*a, **k)
            trainer.callbacks.insert(0, killer)  # before ModelCheckpoint: a "step" kill precedes its save
            return trainer

        def replace_with_killer(src, dst, *a, **k):
            last = str(dst).endswith("last.ckpt")
            if last:
                killer.maybe_kill("in_save")
            replace(src, dst, *a, **k)
            if last:
                killer.maybe_kill("after_save")

        ft.build_trainer, os.replace = build_with_killer, replace_with_killer
        register_resolvers()
        with initialize_config_dir(os.path.join(ROOT, "conf"), version_base="1.3"):
            cfg = compose("finetune", overrides=[str(a) for a in args])
        ft.run_finetune(cfg)
    except BaseException:
        with open(log + ".err", "a") as f:
            f.write(traceback.format_exc())
        os._exit(1)


def launch(args, log, kill=None):
    """Run one fine-tune in a forked child; (its exit code, its traceback text or "")."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    if os.path.exists(log + ".err"):
        os.remove(log + ".err")
    proc = ctx.Process(target=_child, args=(args, kill, log))
    proc.start()
    proc.join(timeout=300)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
    return proc.exitcode, open(log + ".err").read() if os.path.exists(log + ".err") else ""


def losses(log):
    return [tuple(json.loads(line)) for line in open(log)]


def ckpt_step(path):
    return torch.load(path, weights_only=True)["global_step"]
