"""The bundled task's files are exactly what its deterministic generator writes."""
import filecmp
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bundled_task_regenerates_identically(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "make_bundled_task.py"),
                    "--out-dir", str(tmp_path)], check=True, capture_output=True)
    shipped = os.path.join(ROOT, "nemo_peft", "data", "bundled", "date_reformat")
    produced = tmp_path / "date_reformat" if (tmp_path / "date_reformat").is_dir() else tmp_path
    for split in ("train", "validation", "test"):
        assert filecmp.cmp(os.path.join(shipped, f"{split}.jsonl"), produced / f"{split}.jsonl", shallow=False)
