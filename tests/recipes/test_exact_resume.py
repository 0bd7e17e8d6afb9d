"""kill -9 a fine-tune anywhere (mid-epoch, at an epoch boundary, during or right after a checkpoint
write), resume from its last.ckpt: the final adapter is bitwise equal to an uninterrupted run's and
every step has the same loss. A changed adapter config is refused on resume."""
import os
import signal

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from nemo_peft.recipes.build import build_data, build_model, build_trainer
from tests.recipes.forked_runs import EVERY, STEPS, ckpt_step, launch, losses, overrides


def test_kill_anywhere_then_resume_gives_bitwise_equal_adapter(tiny_task, tmp_path):
    full_log = str(tmp_path / "full.log")
    code, err = launch(overrides(tiny_task, tmp_path / "full"), full_log)
    assert code == 0, err
    reference = dict(losses(full_log))
    assert sorted(reference) == list(range(1, STEPS + 1))

    out = tmp_path / "chain"
    last = out / "checkpoints" / "last.ckpt"
    resume = [f"exp_manager.resume_from_checkpoint={last}"]
    # (kill point, last.ckpt's step afterwards); each run resumes from the previous one's last.ckpt
    chain = [(("step", 3), 2),          # mid-epoch, a step after a checkpoint
             (("in_save", 4), 2),       # during the epoch-end checkpoint write: the old file stays
             (("after_save", 4), 4),    # right after the epoch-end checkpoint write
             (("step", 8), 6),          # at an epoch boundary, before its checkpoint (resumes mid-epoch)
             (("after_save", 10), 10)]  # right after a mid-epoch checkpoint write
    log = str(tmp_path / "chain.log")
    for i, (kill, step_after) in enumerate(chain):
        code, err = launch(overrides(tiny_task, out, *(resume if i else [])), log, kill=kill)
        assert code == -signal.SIGKILL, f"run killed at {kill} exited {code}: {err}"
        assert ckpt_step(last) == step_after, kill
        if kill[0] == "in_save":  # it died with the new checkpoint written beside last.ckpt
            assert len(os.listdir(last.parent)) == 2, os.listdir(last.parent)
    code, err = launch(overrides(tiny_task, out, *resume), log)
    assert code == 0, err

    # every step, first run or replayed after a resume, has the uninterrupted run's loss
    seen = losses(log)
    assert {s for s, _ in seen} == set(reference)
    assert [(s, loss) for s, loss in seen if loss != reference[s]] == []
    full_adapter = load_file(str(tmp_path / "full" / "adapter" / "adapter_weights.safetensors"))
    chain_adapter = load_file(str(out / "adapter" / "adapter_weights.safetensors"))
    assert sorted(full_adapter) == sorted(chain_adapter) and len(full_adapter) == 16
    assert [k for k in full_adapter if not torch.equal(full_adapter[k], chain_adapter[k])] == []


@pytest.mark.parametrize("change,fields", [
    (["model.peft.lora_tuning.alpha=8"], ["alpha: 32 -> 8"]),
    (["model.peft.lora_tuning.dim=8", "model.peft.lora_tuning.alpha=16"], ["dim: 4 -> 8", "alpha: 32 -> 16"]),
    (["model.peft.lora_tuning.target_modules=[linear_qkv]"], ["target_modules: ['linear_qkv', 'linear_proj'"]),
])
def test_resume_with_changed_adapter_config_names_the_fields(tiny_task, tmp_path, change, fields):
    out, log = tmp_path / "run", str(tmp_path / "run.log")
    assert launch(overrides(tiny_task, out, steps=EVERY), log)[0] == 0
    resume = f"exp_manager.resume_from_checkpoint={out / 'checkpoints' / 'last.ckpt'}"
    code, err = launch(overrides(tiny_task, out, resume, *change, steps=2 * EVERY), log)
    assert code == 1 and "ValueError" in err and "same model.peft config" in err, err
    for field in fields:
        assert field in err
    assert "doesn't match" not in err  # not torch's optimizer error
    # a changed trainer option alone is fine
    code, err = launch(overrides(tiny_task, out, resume, steps=2 * EVERY), log)
    assert code == 0, err


# ---- in-process: epoch-based training (max_epochs), where Lightning builds the loader early ----
MODEL = {"from_scratch": {"hidden_size": 32, "num_layers": 2, "num_attention_heads": 4, "ffn_hidden_size": 64},
         "optim": {"lr": 5e-3, "warmup_steps": 2}, "eval_exact_match": False,
         "peft": {"peft_scheme": "lora", "lora_tuning": {"target_modules": ["all"], "dim": 4, "dropout": 0.1}}}


class _Crash(L.Callback):
    def __init__(self, at_step):
        self.at_step, self.losses = at_step, {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def _fit(tiny_task, out_dir, crash_at=None, ckpt=None):
    L.seed_everything(0, verbose=False)
    module = build_model(OmegaConf.create(MODEL))
    data = build_data(OmegaConf.create({"train_ds": {"file_names": [tiny_task["train"]], "micro_batch_size": 8,
                                                     "max_seq_length": 32}}), module.tokenizer, module.model)
    trainer = build_trainer(OmegaConf.create({"accelerator": "cpu", "max_epochs": 2, "logger": False,
                                              "enable_progress_bar": False, "enable_model_summary": False,
                                              "limit_val_batches": 0}),
                            out_dir, OmegaConf.create({"save_last": True, "save_top_k": 0, "every_n_train_steps": 2}))
    crash = _Crash(crash_at)
    trainer.callbacks.insert(0, crash)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
    except RuntimeError as e:
        assert "simulated crash" in str(e)
    return crash.losses, module.model.adapter_state_dict()


def test_epoch_based_run_resumes_mid_epoch_exactly(tiny_task, tmp_path):
    full, full_adapter = _fit(tiny_task, str(tmp_path / "full"))
    first, _ = _fit(tiny_task, str(tmp_path / "run"), crash_at=7)  # 4 steps an epoch: last.ckpt is mid-epoch
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt_step(ckpt) == 6
    rest, adapter = _fit(tiny_task, str(tmp_path / "run"), ckpt=ckpt)
    assert sorted(full) == list(range(1, 9)) and sorted(rest) == [7, 8]
    assert {**first, **rest} == full
    assert all(torch.equal(full_adapter[k], adapter[k]) for k in full_adapter)


# ---- the loader's position ----
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_position_counts_batches_handed_out_not_prefetched(workers):
    from nemo_peft.data.sampler import EpochShuffleSampler, ResumableDataLoader

    def loader():
        return ResumableDataLoader(list(range(10)), batch_size=3, sampler=EpochShuffleSampler(10, seed=5),
                                   num_workers=workers, generator=torch.Generator().manual_seed(0))
    first = loader()
    first.sampler.set_epoch(1)
    it = iter(first)
    seen = [next(it).tolist() for _ in range(2)]  # workers have prefetched more than these
    state = first.state_dict()
    assert (state["epoch"], state["start"]) == (1, 6)
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)  # what Lightning does next: the same epoch keeps the position
    rest = [b.tolist() for b in resumed]
    assert sum(seen + rest, []) == first.sampler.order()
    assert (resumed.state_dict()["epoch"], resumed.state_dict()["start"]) == (2, 0)  # used up: next epoch
    with pytest.warns(UserWarning, match="n 10 -> 9"):  # other data: restart the epoch, say so
        ResumableDataLoader(list(range(9)), batch_size=3, sampler=EpochShuffleSampler(9, seed=5)).load_state_dict(state)
