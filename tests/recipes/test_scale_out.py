"""Scale-out on Lightning's strategies, 2 CPU processes over gloo, through examples/finetune.py: DDP and
FSDP2 train exactly what one process with the whole global batch trains; gradient accumulation too;
one voice; evaluation scores every test example once; resume after a crash with the same and with
fewer processes."""
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from nemo_peft.recipes.build import build_model
from tests.helpers import ROOT, run_example

TINY = {"hidden_size": 64, "num_layers": 2, "num_attention_heads": 4, "num_query_groups": 2,
        "ffn_hidden_size": 128, "max_position_embeddings": 512}  # conf/model/tiny.yaml
COMMON = ["model=tiny", "trainer.max_steps=6", "model.global_batch_size=8", "eval_before=false",
          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
          "+data.test_ds.max_num_samples=25", "data.test_ds.micro_batch_size=4",  # 25: 13 + 12 (+1 repeat)
          "exp_manager.checkpoint.every_n_train_steps=2"]


class Run:
    def __init__(self, out: Path, proc: subprocess.CompletedProcess):
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        self.out, self.stdout = out, proc.stdout
        rows = list(csv.DictReader(open(out / "metrics.csv")))  # exp_manager's CSV logger (on by default)
        # a resumed run appends to its metrics.csv: the last value logged for a step is the one that counts
        by_step = {int(r["step"]): float(r["train_loss"]) for r in rows if r.get("train_loss")}
        self.losses = [by_step[s] for s in sorted(by_step)]
        self.test = {k: float(r[k]) for r in rows for k in ("test_loss", "test_exact_match") if r.get(k)}
        self.adapter = load_file(str(out / "adapter" / "adapter_weights.safetensors"))


def finetune(out: Path, *extra) -> Run:
    return Run(out, run_example("finetune.py", *COMMON, f"exp_manager.output_dir={out}", *extra, cwd=out.parent))


def assert_same_training(run: Run, reference: Run, adapter_tol: float = 1e-6):
    assert len(run.losses) == len(reference.losses) == 6
    for step, (a, b) in enumerate(zip(run.losses, reference.losses)):
        assert abs(a - b) <= 1e-5 * abs(b), f"step {step}: loss {a} vs {b}"
    assert run.adapter.keys() == reference.adapter.keys()
    worst = max(float((run.adapter[k] - reference.adapter[k]).abs().max()) for k in run.adapter)
    assert worst <= adapter_tol, worst
    assert run.losses[-1] < run.losses[0]  # it did train


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, micro batch 8 = the whole global batch."""
    return finetune(tmp_path_factory.mktemp("one") / "run", "data.train_ds.micro_batch_size=8")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return finetune(tmp_path_factory.mktemp("ddp") / "run", "trainer=ddp", "data.train_ds.micro_batch_size=4")


def test_ddp_two_processes_train_what_one_process_with_twice_the_micro_batch_trains(ddp, one_process):
    assert "global batch 8 = micro batch 4 x 2 data-parallel process(es) x 1 accumulation" in ddp.stdout
    assert_same_training(ddp, one_process)
    # each test example scored once across the two processes (13 + 12, one padding repeat not counted)
    assert ddp.test["test_loss"] == pytest.approx(one_process.test["test_loss"], rel=1e-5)
    assert ddp.test["test_exact_match"] == one_process.test["test_exact_match"]
    # one voice: the first process prints and writes
    assert ddp.stdout.count("adapter saved to") == 1 and ddp.stdout.count("trainable params") == 1
    assert re.findall(r"^\[throughput\]\s+(\d+)\s+[\d.]+\s", ddp.stdout, re.M) == ["0", "1"]  # both ranks, once
    # only the adapter's gradients are all-reduced
    reduced, adapter = re.search(r"DDP all-reduced ([\d.]+) MB of gradients per optimizer step \(trainable adapter "
                                 r"weights: ([\d.]+) MB", ddp.stdout).groups()
    assert float(reduced) == float(adapter) == pytest.approx(
        sum(v.numel() * 4 for v in ddp.adapter.values()) / 1e6, abs=1e-3)


def test_gradient_accumulation_trains_what_one_big_micro_batch_trains(tmp_path, one_process):
    run = finetune(tmp_path / "run", "data.train_ds.micro_batch_size=4")  # 8 / (4 x 1) = 2 accumulation steps
    assert "global batch 8 = micro batch 4 x 1 data-parallel process(es) x 2 accumulation" in run.stdout
    assert_same_training(run, one_process)


def test_fsdp2_trains_what_one_process_trains_and_checkpoints_hold_only_the_adapter(tmp_path, one_process):
    run = finetune(tmp_path / "run", "trainer=fsdp", "data.train_ds.micro_batch_size=4")
    assert_same_training(run, one_process, adapter_tol=1e-5)
    assert run.test["test_loss"] == pytest.approx(one_process.test["test_loss"], rel=1e-5)
    assert run.stdout.count("adapter saved to") == 1
    # the Lightning checkpoint: the gathered adapter, never a frozen base tensor
    ckpt = torch.load(run.out / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    assert state and all(".adapters." in k for k in state), [k for k in state if ".adapters." not in k][:5]
    assert sum(v.numel() for v in state.values()) == sum(v.numel() for v in run.adapter.values())
    for key, value in run.adapter.items():  # whole (not one process's shard) and equal to the saved adapter
        assert torch.equal(state["model." + key], value)
    # the adapter written under FSDP loads into a fresh single-process model: the same logits as one process's
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = []
    for adapter_dir in (run.out / "adapter", one_process.out / "adapter"):
        module = build_model(OmegaConf.create({"from_scratch": TINY}))
        assert module.model.load_adapters(str(adapter_dir)) == ["default"]
        logits.append(module.model(ids).detach())
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


@pytest.mark.slow  # a combination; the default suite keeps each part on its own (CI time)
def test_ptuning_and_adapter_together_under_ddp_and_fsdp2(tmp_path):
    scheme = "model.peft.peft_scheme=ptuning,adapter"  # P-tuning's encoder sits in FSDP's root unit
    one = finetune(tmp_path / "one", scheme, "data.train_ds.micro_batch_size=8")
    for strategy in ("ddp", "fsdp"):
        run = finetune(tmp_path / strategy, scheme, f"trainer={strategy}", "data.train_ds.micro_batch_size=4")
        assert_same_training(run, one, adapter_tol=1e-6 if strategy == "ddp" else 1e-5)


@pytest.mark.slow  # a combination; the default suite keeps each part on its own (CI time)
def test_fsdp2_with_activation_checkpointing_and_qlora_under_ddp(tmp_path, one_process):
    recomputed = finetune(tmp_path / "ckpt", "trainer=fsdp", "data.train_ds.micro_batch_size=4",
                          "model.activations_checkpoint_granularity=full")
    assert_same_training(recomputed, one_process, adapter_tol=1e-5)
    qlora = "model.peft.peft_scheme=qlora"  # its 4-bit base cannot shard (an error under fsdp), but DDP takes it
    one = finetune(tmp_path / "q1", qlora, "data.train_ds.micro_batch_size=8")
    two = finetune(tmp_path / "q2", qlora, "trainer=ddp", "data.train_ds.micro_batch_size=4")
    assert_same_training(two, one)


def crash_at_step_3(out: Path, *extra):
    crash = subprocess.run([sys.executable, str(Path(ROOT) / "tests" / "recipes" / "finetune_killed.py"), *COMMON,
                            f"exp_manager.output_dir={out}", "data.train_ds.micro_batch_size=4", *extra],
                           cwd=out.parent, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "KILL_AT_STEP": "3"})
    assert crash.returncode != 0 and not (out / "adapter").exists(), crash.stderr[-2000:]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_ddp_resume_after_a_crash_with_the_same_and_with_fewer_processes(tmp_path, ddp):
    killed = tmp_path / "killed"
    crash_at_step_3(killed, "trainer=ddp")
    shutil.copytree(killed, tmp_path / "killed_copy")

    same = finetune(killed, "trainer=ddp", "data.train_ds.micro_batch_size=4", "exp_manager.resume_if_exists=true")
    assert_same_training_tail(same, ddp, tol=1e-6)

    fewer = finetune(tmp_path / "killed_copy", "data.train_ds.micro_batch_size=4", "exp_manager.resume_if_exists=true")
    assert "Data position: resuming epoch 0 at sample 16 of 2000 in the global order, which the checkpoint's 2 " \
           "data-parallel process(es) had trained on; this run's 1 process(es) split the rest" in fewer.stdout
    assert "Batch split changed since the checkpoint (data-parallel processes x micro batch: 2 x 4 -> 1 x 4)" \
           in fewer.stdout
    assert_same_training_tail(fewer, ddp, tol=1e-5)  # one process sums the same tokens in another order


@pytest.mark.slow  # a combination; the default suite keeps each part on its own (CI time)
def test_resume_a_one_process_run_on_two_processes(tmp_path, one_process):
    killed = tmp_path / "killed"
    crash_at_step_3(killed)  # one process accumulating 2 micro-batches of 4
    more = finetune(killed, "trainer=ddp", "data.train_ds.micro_batch_size=4", "exp_manager.resume_if_exists=true")
    assert "which the checkpoint's 1 data-parallel process(es) had trained on; this run's 2 process(es)" in more.stdout
    assert_same_training_tail(more, one_process, tol=1e-5)


def assert_same_training_tail(resumed: Run, uninterrupted: Run, tol: float):
    """The resumed run logged steps 3..6 (after the crashed run's 1..2 in the same metrics.csv); they and its
    final adapter match the uninterrupted run's."""
    assert len(resumed.losses) == 6
    for a, b in zip(resumed.losses[2:], uninterrupted.losses[2:]):
        assert abs(a - b) <= 1e-5 * abs(b)
    worst = max(float((resumed.adapter[k] - uninterrupted.adapter[k]).abs().max()) for k in resumed.adapter)
    assert worst <= tol, worst

