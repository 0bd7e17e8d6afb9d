"""The fine-tuning recipe behind ``examples/finetune.py``.

An output directory belongs to one run: a run refuses a directory that holds another run's
adapter or checkpoints unless ``exp_manager.resume_if_exists`` or ``exp_manager.overwrite``
says what to do, ``<output_dir>/.lock`` keeps two live runs apart, and writability and free
space are checked before training starts. A run speaks through the ``nemo_peft`` logger (run_log.py): a
banner, the data summary, and at the end where it wrote the adapter, checkpoints, metrics.csv, loss.png
(loggers.py, plots.py) and its log.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import socket
import tempfile
import time

import lightning as L
from omegaconf import DictConfig

from nemo_peft.core import adapter_io
from nemo_peft.models.fsdp import check_shardable, full_adapter_weights
from nemo_peft.recipes import precision_advice
from nemo_peft.recipes.build import build_data, build_model, build_trainer, check_section_keys
from nemo_peft.recipes.estimate import estimate_finetune
from nemo_peft.recipes.loggers import build_loggers, set_resuming
from nemo_peft.recipes.loggers import where as logger_files
from nemo_peft.recipes.plots import draw_loss
from nemo_peft.recipes.run_log import get_logger, log_file, quiet_third_party
from nemo_peft.recipes.run_report import banner, timing_line, written_lines
from nemo_peft.recipes.step_metrics import StepMetrics
from nemo_peft.recipes.run_config import EXP_MANAGER_KEYS, ROOT_KEYS, batch_arithmetic
from nemo_peft.recipes.strategies import AdapterDDPStrategy, AdapterFSDPStrategy
from nemo_peft.recipes.throughput import ThroughputMonitor

LOCK_NAME = ".lock"
CKPT_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning's ckpt_path names for its own checkpoints
MARGIN_BYTES = 16 << 20


def _exact_match(trainer, module, data) -> float | None:
    if not module.eval_exact_match or data.configs["test"] is None:
        return None
    result = trainer.test(module, datamodule=data, verbose=False)
    module.stopped_share = result[0].get("test_stopped") if result else None
    return result[0].get("test_exact_match") if result else None


def run_finetune(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    check_section_keys(cfg, ROOT_KEYS, "the finetune config")
    check_section_keys(cfg.exp_manager, EXP_MANAGER_KEYS, "exp_manager")
    log = get_logger()
    quiet_third_party()
    L.seed_everything(cfg.get("seed", 1234), verbose=False)
    em = cfg.exp_manager
    out_dir = str(em.output_dir)
    adapter_dir = str(em.get("adapter_dir") or os.path.join(out_dir, "adapter"))
    trainer_cfg, batch_line = batch_arithmetic(cfg)
    trainer = build_trainer(trainer_cfg, out_dir, em.get("checkpoint"), callbacks=[ThroughputMonitor(), StepMetrics()],
                            loggers=build_loggers(em, out_dir, str(cfg.get("name", "finetune"))))
    # Under a multi-process strategy every process runs this recipe: the first one speaks and owns the
    # directory (lock, refusal, room check, the adapter); the others follow its resume decision.
    leader = trainer.global_rank == 0
    say = log.info if leader else _silent
    with output_lock(out_dir) if leader else contextlib.nullcontext():
        if leader:
            ckpt, replaced = resume_checkpoint(em, out_dir, adapter_dir)
        else:
            ckpt, replaced = follower_checkpoint(em, out_dir), {}
        set_resuming(trainer, ckpt is not None)  # a resumed run appends to its metrics.csv
        module = build_model(cfg.model)
        if not module.model.adapter_names:  # nothing would be frozen: the whole base would train
            raise ValueError("model.peft.peft_scheme is empty, so there is no adapter to train; set it to a method "
                             "(e.g. model.peft.peft_scheme=lora). To run the base model alone use "
                             "examples/generate.py.")
        if isinstance(trainer.strategy, AdapterFSDPStrategy):
            check_shardable(module.model)  # before any process starts
        for line in banner(cfg, module, batch_line, trainer_cfg):
            say(line)
        slower = precision_advice.for_run(trainer_cfg, cfg.data, module.model) if leader else None
        if slower:  # bf16 asked for on a CPU where it is slower than fp32
            log.warning(slower)
        checkpoints = em.get("checkpoint") is not None and cfg.trainer.get("enable_checkpointing", True)
        if leader:
            check_room(module, out_dir, adapter_dir, checkpoints)
        data = build_data(cfg.data, module.tokenizer, module.model)
        module.add_stop_token_ids(data.stop_token_ids())  # e.g. the chat template's end of turn
        summary = data.summarize("train", module.sampling.stop_token_ids)
        say(summary.line())
        if not any(summary.trained):
            raise ValueError(f"No example of data.train_ds has a token to train on ({summary.line()}). Check the "
                             "format and label fields and max_seq_length: python examples/inspect_data.py shows "
                             "the trained tokens of each example.")
        if leader and ckpt is None and trainer.world_size == 1 and cfg.get("estimate", True):
            # a few probe steps on a throwaway copy of the state: the run that follows is unchanged
            try:
                lines = estimate_finetune(cfg, module).lines()
            except Exception as e:  # advisory only: the run below meets the same problem and says so itself
                lines = [f"pre-flight estimate skipped: the probe failed ({type(e).__name__}: {str(e)[:200]})"]
            for line in lines:
                say(line)

        # A resumed run's starting point was scored by the run it continues (its adapter is not loaded yet here)
        before = _exact_match(trainer, module, data) if cfg.get("eval_before", True) and ckpt is None else None
        fit_started = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=ckpt)
        train_s = time.perf_counter() - fit_started
        if reduced_bytes_line(trainer, module):
            say(reduced_bytes_line(trainer, module))
        after = _exact_match(trainer, module, data)
        with full_adapter_weights(module.model):  # FSDP: every process gathers, the first writes
            if leader:
                _save_adapter(module, adapter_dir, out_dir)
        if not leader:
            return {"exact_match_before": before, "exact_match_after": after, "adapter_dir": adapter_dir,
                    "adapter_bytes": None, "trainer": trainer, "module": module}
        _drop_replaced(replaced)
    size = sum(os.path.getsize(p) for p in (os.path.join(adapter_dir, f) for f in os.listdir(adapter_dir))
               if os.path.isfile(p))
    if before is not None or after is not None:
        stopped = getattr(module, "stopped_share", None)
        say(f"held-out exact match: before {_fmt(before)} -> after {_fmt(after)}"
            + (f" (answers that ended by themselves, at EOS or end of turn: {stopped:.0f}%)"
               if stopped is not None else ""))
    say(f"adapter saved to {adapter_dir} ({size / 1e6:.2f} MB)")
    files = logger_files(trainer)
    png, note = draw_loss(trainer, files.get("metrics.csv"), os.path.join(out_dir, "loss.png"))
    files["loss.png"] = png
    for line in [note, timing_line(time.perf_counter() - started, train_s, trainer.global_step),
                 *written_lines(out_dir, adapter_dir, files, log_file())]:
        if line:
            say(line)
    return {"exact_match_before": before, "exact_match_after": after, "adapter_dir": adapter_dir,
            "adapter_bytes": size, "trainer": trainer, "module": module, "files": files}


def _silent(*args, **kwargs) -> None:
    pass


def reduced_bytes_line(trainer, module) -> str | None:
    strategy = trainer.strategy
    if not isinstance(strategy, AdapterDDPStrategy) or not strategy.steps:
        return None
    steps = strategy.steps
    adapter = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    return (f"DDP all-reduced {strategy.reduced_bytes / steps / 1e6:.3f} MB of gradients per optimizer step "
            f"(trainable adapter weights: {adapter / 1e6:.3f} MB; the frozen base is not synchronised)")

def _fmt(x):
    return "n/a" if x is None else f"{x:.1f}%"


# ---- one run per output directory ----
def previous_run(out_dir: str, adapter_dir: str) -> list[str]:
    """What another run left in ``out_dir``: its adapter, its checkpoints."""
    held = [f"adapter ({adapter_dir})"] if adapter_io.exists(adapter_dir) else []
    ckpts = sorted(glob.glob(os.path.join(out_dir, "checkpoints", "*.ckpt")))
    if ckpts:
        held.append(f"checkpoints ({', '.join(os.path.basename(c) for c in ckpts)})")
    return held


def _inside(path: str, directory: str) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(directory) + os.sep)


def resume_checkpoint(em, out_dir: str, adapter_dir: str) -> tuple[str | None, dict]:
    """(the checkpoint to resume from or None, {old checkpoint: mtime} that an overwrite replaces).
    Refuses a directory that holds another run's files unless the config says what to do."""
    explicit = em.get("resume_from_checkpoint")
    resume, overwrite = bool(em.get("resume_if_exists", False)), bool(em.get("overwrite", False))
    if resume and overwrite:
        raise ValueError("exp_manager.resume_if_exists and exp_manager.overwrite are both true; set one: "
                         "resume_if_exists continues the run in output_dir, overwrite replaces it.")
    held = previous_run(out_dir, adapter_dir)
    last = os.path.join(out_dir, "checkpoints", "last.ckpt")
    if explicit:
        explicit = str(explicit)
        if explicit not in CKPT_KEYWORDS and not os.path.isfile(explicit):
            raise FileNotFoundError(f"exp_manager.resume_from_checkpoint={explicit!r} does not exist; pass a .ckpt "
                                    "written by a previous run (its <output_dir>/checkpoints/last.ckpt) or 'last'.")
        if not held or overwrite or explicit in CKPT_KEYWORDS or _inside(explicit, out_dir):
            return explicit, {}
    elif resume and os.path.isfile(last):
        get_logger().info(f"exp_manager.resume_if_exists=true: resuming from {last}")
        return last, {}
    if not held:
        return None, {}
    if overwrite:
        get_logger().info(f"exp_manager.overwrite=true: this run replaces {' and '.join(held)} in {out_dir}")
        return None, {c: os.path.getmtime(c) for c in glob.glob(os.path.join(out_dir, "checkpoints", "*.ckpt"))}
    where = f"exp_manager.resume_from_checkpoint={explicit!r} is outside it, so this" if explicit else "This"
    first = (f"There is no {last} to resume from (exp_manager.resume_if_exists=true needs one). Set"
             if resume else f"Set exp_manager.resume_if_exists=true to continue from {last},")
    raise FileExistsError(
        f"exp_manager.output_dir={out_dir!r} already holds another run's {' and '.join(held)}. {where} run would "
        f"replace them. {first} exp_manager.overwrite=true to replace them, or pick another exp_manager.output_dir.")


def follower_checkpoint(em, out_dir: str) -> str | None:
    """The checkpoint the leading process chose (``resume_checkpoint`` without its checks, which it made)."""
    if em.get("resume_from_checkpoint"):
        return str(em.resume_from_checkpoint)
    last = os.path.join(out_dir, "checkpoints", "last.ckpt")
    return last if em.get("resume_if_exists", False) and os.path.isfile(last) else None


def _drop_replaced(old: dict) -> None:
    """After an overwrite: remove the old run's checkpoints this run did not rewrite, so a later
    resume_if_exists cannot pick up a checkpoint that does not match the new adapter."""
    for path, mtime in old.items():
        if os.path.isfile(path) and os.path.getmtime(path) == mtime:
            os.remove(path)
            get_logger().info(f"removed {path} (left by the run this one replaced)")


def _lock_holder(lock: str) -> str | None:
    """Who holds ``lock``: a description, or None when nobody does (gone, or its process is dead)."""
    try:
        with open(lock) as f:
            parts = f.read().split()
        age = time.time() - os.path.getmtime(lock)
    except FileNotFoundError:
        return None
    if len(parts) != 2 or not parts[0].isdigit():
        return "a run that is starting" if age < 30 else None  # written right after O_EXCL creates it
    pid, host = int(parts[0]), parts[1]
    if host != socket.gethostname():
        return f"pid {pid} on host {host}"  # cannot check another machine's processes
    return f"pid {pid}" if adapter_io.pid_alive(pid) else None


@contextlib.contextmanager
def output_lock(out_dir: str):
    """Hold ``<out_dir>/.lock`` (this pid and host) for the run; a dead holder's lock is taken over."""
    lock, mine = os.path.join(out_dir, LOCK_NAME), f"{os.getpid()} {socket.gethostname()}\n"
    try:
        os.makedirs(out_dir, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = _lock_holder(lock)
                if holder is not None:
                    raise RuntimeError(
                        f"exp_manager.output_dir={out_dir!r} is in use by another run ({holder}; lock file {lock}). "
                        f"Wait for it to finish or pick another exp_manager.output_dir; if no run uses it, delete "
                        f"{lock}.") from None
                get_logger().info(f"taking over the stale lock {lock} (its run is no longer running)")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(mine)
            break
        else:
            raise RuntimeError(f"Could not take {lock}: other runs keep creating it; pick another "
                               "exp_manager.output_dir.")
    except OSError as e:
        raise OSError(e.errno, f"exp_manager.output_dir={out_dir!r} cannot be written ({e}); fix its permissions "
                               "or pick another exp_manager.output_dir. Nothing was trained.") from e
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):
            with open(lock) as f:
                ours = f.read() == mine
            if ours:
                os.remove(lock)


# ---- room for what the run will write ----
def _probe(directory: str, key: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=f".tmp-{os.getpid()}-probe")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise OSError(e.errno, f"{key}={directory!r} cannot be written ({e}); fix its permissions or pick another "
                               f"{key}. Nothing was trained.") from e


def check_room(module, out_dir: str, adapter_dir: str, checkpoints: bool) -> None:
    """Before training: both directories are writable and their filesystems have room for the adapter
    and, with checkpoints, the checkpoint (adapter + two AdamW moments = 3x the trainable bytes)."""
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    adapter_parent = os.path.dirname(os.path.abspath(adapter_dir))
    key = "exp_manager.adapter_dir" if not _inside(adapter_dir, out_dir) else "exp_manager.output_dir"
    _probe(adapter_parent, key)
    needs = {}  # st_dev -> [directory, bytes, what]
    for directory, nbytes, what in ((adapter_parent, trainable, "adapter"),
                                    (out_dir, 3 * trainable if checkpoints else 0, "checkpoint")):
        entry = needs.setdefault(os.stat(directory).st_dev, [directory, 0, []])
        entry[1] += nbytes
        entry[2].append(f"{what} {nbytes / 1e6:.1f} MB")
    for directory, nbytes, parts in needs.values():
        need = int(nbytes * 1.1) + MARGIN_BYTES
        free = shutil.disk_usage(directory).free
        if free < need:
            raise OSError(errno.ENOSPC, f"{directory!r} has {free / 1e6:.1f} MB free but this run needs about "
                                        f"{need / 1e6:.1f} MB there ({', '.join(parts)}, plus a margin). Free space "
                                        "or pick another exp_manager.output_dir. Nothing was trained.")


def _save_adapter(module, adapter_dir: str, out_dir: str) -> None:
    try:
        module.save_adapters(adapter_dir)
    except OSError as e:
        last = os.path.join(out_dir, "checkpoints", "last.ckpt")
        if not os.path.isfile(last) or e.strerror is None:
            raise
        raise OSError(e.errno, f"{e.strerror} For this run: python examples/export.py --from-checkpoint {last} "
                               "--output <another adapter dir>") from e
