"""An output directory belongs to one run: a used one is refused unless exp_manager says resume or
overwrite, a lock keeps two live runs apart, room is checked before training, and a run's adapter
can be recovered from its Lightning checkpoint."""
import errno
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from nemo_peft.recipes import finetune as ft
from nemo_peft.recipes.build import build_model
from nemo_peft.recipes.export import from_checkpoint
from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(out, tiny_task, *extra):
    register_resolvers()
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return compose("finetune", overrides=peft_scheme_args([
            "model=tiny", f"exp_manager.output_dir={out}", "trainer.max_steps=2", "eval_before=false",
            "model.eval_exact_match=false", "model.optim.lr=5e-3", "model.peft.lora_tuning.dim=4",
            f"data.train_ds.file_names=[{tiny_task['train']}]", "data.validation_ds=null", "data.test_ds=null",
            "trainer.enable_progress_bar=false", "exp_manager.checkpoint.every_n_train_steps=1", "trainer.num_threads=1", *extra]))


def finetune(out, tiny_task, *extra):
    return ft.run_finetune(config(out, tiny_task, *extra))


def digest(directory):
    return {f: hashlib.sha256(open(os.path.join(directory, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(directory)) if os.path.isfile(os.path.join(directory, f))}


@pytest.fixture
def used(tmp_path, tiny_task):
    """An output directory holding a finished run's adapter and checkpoint, and their digests."""
    out = tmp_path / "run"
    finetune(out, tiny_task)
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / ".lock").exists()
    return out, digest(out / "adapter"), digest(out / "checkpoints")


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("max_steps", [2, 0])
def test_used_output_dir_is_refused_and_kept(used, tiny_task, max_steps):
    out, adapter, ckpts = used
    with pytest.raises(FileExistsError) as info:
        finetune(out, tiny_task, f"trainer.max_steps={max_steps}")
    message = str(info.value)
    for part in (str(out), "adapter", "last.ckpt", "exp_manager.resume_if_exists=true",
                 "exp_manager.overwrite=true", "another exp_manager.output_dir"):
        assert part in message, message
    assert digest(out / "adapter") == adapter and digest(out / "checkpoints") == ckpts
    assert not (out / ".lock").exists()


def test_resume_if_exists_continues_from_last_ckpt(used, tiny_task, capsys):
    out, _, _ = used
    result = finetune(out, tiny_task, "exp_manager.resume_if_exists=true", "trainer.max_steps=4")
    assert result["trainer"].global_step == 4
    assert f"resuming from {out / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out


def test_resume_if_exists_in_a_fresh_dir_starts_fresh(tmp_path, tiny_task):
    result = finetune(tmp_path / "new", tiny_task, "exp_manager.resume_if_exists=true")
    assert result["trainer"].global_step == 2


def test_resume_if_exists_without_a_checkpoint_is_refused(tmp_path, tiny_task):
    out = tmp_path / "run"
    finetune(out, tiny_task, "exp_manager.checkpoint=null")
    with pytest.raises(FileExistsError, match=r"There is no .*last.ckpt to resume from.*Set exp_manager.overwrite=true"):
        finetune(out, tiny_task, "exp_manager.resume_if_exists=true")


def test_resume_from_checkpoint_in_the_same_dir_is_allowed(used, tiny_task):
    out, _, _ = used
    ckpt = out / "checkpoints" / "last.ckpt"
    result = finetune(out, tiny_task, f"exp_manager.resume_from_checkpoint={ckpt}", "trainer.max_steps=3")
    assert result["trainer"].global_step == 3


def test_resume_from_another_dirs_checkpoint_into_a_used_dir_is_refused(used, tmp_path, tiny_task):
    out, adapter, _ = used
    other = tmp_path / "elsewhere.ckpt"
    shutil.copy(out / "checkpoints" / "last.ckpt", other)
    with pytest.raises(FileExistsError, match="outside it"):
        finetune(out, tiny_task, f"exp_manager.resume_from_checkpoint={other}")
    assert digest(out / "adapter") == adapter


def test_overwrite_replaces_the_old_run(used, tiny_task):
    out, adapter, _ = used
    finetune(out, tiny_task, "exp_manager.overwrite=true", "model.peft.lora_tuning.dim=2",
             "exp_manager.checkpoint=null")
    assert digest(out / "adapter") != adapter
    assert '"dim": 2' in (out / "adapter" / "adapter_config.json").read_text()
    assert not (out / "checkpoints" / "last.ckpt").exists()  # the old run's checkpoint would not match


def test_resume_and_overwrite_together_is_an_error(tmp_path, tiny_task):
    with pytest.raises(ValueError, match="resume_if_exists and exp_manager.overwrite are both true"):
        finetune(tmp_path / "x", tiny_task, "exp_manager.resume_if_exists=true", "exp_manager.overwrite=true")


def test_live_lock_blocks_a_second_run(tmp_path, tiny_task):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".lock").write_text(f"{holder.pid} {ft.socket.gethostname()}\n")
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid}.*delete .*\.lock"):
            finetune(out, tiny_task)
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").exists() and not (out / "adapter").exists()


def test_stale_lock_is_taken_over(tmp_path, tiny_task, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{dead_pid()} {ft.socket.gethostname()}\n")
    finetune(out, tiny_task)
    assert "taking over the stale lock" in capsys.readouterr().out
    assert (out / "adapter").is_dir() and not (out / ".lock").exists()


def test_lock_is_held_during_the_run(tmp_path, tiny_task, monkeypatch):
    out, seen = tmp_path / "run", []
    real = ft.build_model
    monkeypatch.setattr(ft, "build_model", lambda cfg: (seen.append((out / ".lock").read_text()), real(cfg))[1])
    finetune(out, tiny_task)
    assert seen == [f"{os.getpid()} {ft.socket.gethostname()}\n"] and not (out / ".lock").exists()


def test_no_room_is_refused_before_training(tmp_path, tiny_task, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(OSError, match=r"has 1.0 MB free but this run needs about .* MB there \(adapter .* MB, "
                                      r"checkpoint .* MB.*exp_manager.output_dir. Nothing was trained") as info:
        finetune(out, tiny_task)
    assert info.value.errno == errno.ENOSPC
    assert not (out / "checkpoints").exists() and not (out / "adapter").exists() and not (out / ".lock").exists()


def test_unwritable_adapter_dir_is_refused_before_training(tmp_path, tiny_task, monkeypatch):
    def denied(**kw):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(ft.tempfile, "mkstemp", denied)
    with pytest.raises(OSError, match=r"exp_manager.adapter_dir=.*cannot be written.*Nothing was trained"):
        finetune(tmp_path / "run", tiny_task, f"exp_manager.adapter_dir={tmp_path / 'elsewhere' / 'ad'}")


def test_used_dir_through_the_cli_exits_nonzero_and_keeps_the_adapter(used, tiny_task, tmp_path):
    out, adapter, _ = used
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "finetune.py"), "model=tiny",
                          f"exp_manager.output_dir={out}", "trainer.max_steps=0", "eval_before=false",
                          f"data.train_ds.file_names=[{tiny_task['train']}]"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "already holds another run's adapter" in res.stderr, res.stderr[-2000:]
    assert "adapter saved" not in res.stdout
    assert digest(out / "adapter") == adapter


def test_full_disk_at_the_final_save_names_the_recovery_command(tmp_path, tiny_task, monkeypatch):
    from nemo_peft.core import adapter_io

    def full(tensors, filename):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(adapter_io, "save_file", full)
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError, match=rf"filesystem is full.*--from-checkpoint {last} --output") as info:
        finetune(out, tiny_task)
    assert info.value.errno == errno.ENOSPC and not (out / "adapter").exists() and not (out / ".lock").exists()
    monkeypatch.undo()
    from_checkpoint(str(last), str(tmp_path / "recovered"))
    assert adapter_io.exists(str(tmp_path / "recovered"))


def load_export_example():
    spec = importlib.util.spec_from_file_location("export_example", os.path.join(ROOT, "examples", "export.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adapter_recovered_from_checkpoint_gives_the_same_logits(used, tiny_task, tmp_path):
    out, _, _ = used
    recovered = tmp_path / "recovered"
    load_export_example().main(["--from-checkpoint", str(out / "checkpoints" / "last.ckpt"),
                                "--output", str(recovered)])
    cfg = config(out, tiny_task).model
    ids = torch.tensor([[5, 17, 30, 42, 7, 9]])
    logits = []
    for adapter in (out / "adapter", recovered):
        module = build_model(cfg)  # the tiny base again, same init seed
        module.model.delete_adapter("default")
        module.model.load_adapters(str(adapter))
        module.eval()
        with torch.no_grad():
            logits.append(module.model(ids))
    with torch.no_grad():
        base = build_model(cfg).model.eval()(ids)
    assert torch.equal(logits[0], logits[1]) and not torch.equal(logits[0], base)  # trained, B != 0


def test_recovery_errors_are_clear(used, tmp_path):
    out, adapter, _ = used
    ckpt = str(out / "checkpoints" / "last.ckpt")
    with pytest.raises(FileExistsError, match="already holds an adapter; pass --overwrite"):
        from_checkpoint(ckpt, str(out / "adapter"))
    assert digest(out / "adapter") == adapter
    from_checkpoint(ckpt, str(out / "adapter"), overwrite=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_checkpoint(str(tmp_path / "nope.ckpt"), str(tmp_path / "x"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read .*junk.ckpt"):
        from_checkpoint(str(junk), str(tmp_path / "x"))
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="holds no nemo_peft adapter"):
        from_checkpoint(str(tmp_path / "plain.ckpt"), str(tmp_path / "x"))
