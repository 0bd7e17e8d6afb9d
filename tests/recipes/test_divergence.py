"""A diverging fine-tune (model.optim.lr=1e20) through the recipe: it stops with the step, the lr
and the last good checkpoint, exits non-zero, writes no NaN adapter or checkpoint, and the run
resumes from that checkpoint with a sane lr."""
import os
import re

import torch
from safetensors.torch import load_file

from nemo_peft.recipes.checkpoint_io import SafeCheckpointIO
from tests.recipes.forked_runs import ckpt_step, launch, overrides


def test_lr_1e20_stops_clearly_and_leaves_the_last_good_checkpoint(tiny_task, tmp_path):
    out, log = tmp_path / "run", str(tmp_path / "run.log")
    last, weights = out / "checkpoints" / "last.ckpt", out / "adapter" / "adapter_weights.safetensors"
    assert launch(overrides(tiny_task, out, steps=4), log)[0] == 0
    adapter_before = weights.read_bytes()

    resume = f"exp_manager.resume_from_checkpoint={last}"
    code, err = launch(overrides(tiny_task, out, resume, "model.optim.lr=1e20"), log)
    assert code == 1 and re.search(r"FloatingPointError: Training stopped in step [56] of 12 \(lr [0-9.]+e\+(19|20)\)",
                                   err), err  # the lr in effect: 1e20, cosine-decayed
    assert f"The last good checkpoint is {str(last)!r}" in err
    assert ckpt_step(last) in (4, 6)
    SafeCheckpointIO().load_checkpoint(str(last))  # finite, or this raises
    assert weights.read_bytes() == adapter_before  # no NaN adapter replaced the good one

    code, err = launch(overrides(tiny_task, out, resume), log)  # back to lr 5e-3: resumes and finishes
    assert code == 0, err
    assert all(torch.isfinite(t).all() for t in load_file(str(weights)).values())


def test_lr_1e20_from_scratch_writes_nothing(tiny_task, tmp_path):
    out, log = tmp_path / "run", str(tmp_path / "run.log")
    code, err = launch(overrides(tiny_task, out, "model.optim.lr=1e20", "model.optim.warmup_steps=0"), log)
    assert code == 1 and re.search(r"Training stopped in step 2 of 12 \(lr [0-9.]+e\+(19|20)\)", err), err
    assert "No checkpoint has been written in this run" in err
    assert not os.path.exists(out / "adapter") and not os.path.exists(out / "checkpoints" / "last.ckpt")
