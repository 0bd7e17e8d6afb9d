"""The README's main job: LoRA on the embedded SmolLM2-135M-Instruct lifts exact match, in one process and in two (slow)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_default_finetune_lifts_exact_match(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "finetune.py"),
                          f"exp_manager.output_dir={tmp_path}", "trainer.enable_progress_bar=false"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    before, after = map(float, re.search(r"before ([\d.]+)% -> after ([\d.]+)%", res.stdout).groups())
    assert after - before >= 40, res.stdout


@pytest.mark.slow
def test_ddp_finetune_on_two_processes_lifts_exact_match(tmp_path):
    """The same job on 2 CPU processes (trainer=ddp): one adapter, one summary, exact match gathered over both."""
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "finetune.py"), "trainer=ddp",
                          "trainer.devices=2", f"exp_manager.output_dir={tmp_path}", "trainer.enable_progress_bar=false"],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("adapter saved to") == 1 and res.stdout.count("held-out exact match") == 1
    before, after = map(float, re.search(r"before ([\d.]+)% -> after ([\d.]+)%", res.stdout).groups())
    assert after - before >= 40, res.stdout


@pytest.mark.slow
def test_chat_finetune_through_the_chat_template_lifts_exact_match_and_stops_at_end_of_turn(tmp_path):
    """data=chat_dates: multi-turn conversations rendered with the GGUF's own chat template."""
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "finetune.py"), "data=chat_dates",
                          f"exp_manager.output_dir={tmp_path}", "trainer.enable_progress_bar=false"],
                         capture_output=True, text=True, timeout=2400)
    assert res.returncode == 0, res.stderr[-3000:]
    before, after, stopped = map(float, re.search(
        r"before ([\d.]+)% -> after ([\d.]+)% \(answers that ended by themselves, at EOS or end of turn: ([\d.]+)%\)",
        res.stdout).groups())
    assert after - before >= 40 and stopped >= 99, res.stdout
