"""The layering contract (.importlinter): core -> modules -> peft -> models -> data -> convert ->
families -> recipes; a lower layer never imports a higher one."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _lint(root: str) -> subprocess.CompletedProcess:
    # lint-imports analyses the package importable from its working directory
    env = {**os.environ, "PYTHONPATH": root}
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    return subprocess.run([exe if os.path.isfile(exe) else "lint-imports", "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True)


def test_layers_contract_is_kept():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: core importing convert (a higher layer) is reported."""
    shutil.copytree(os.path.join(ROOT, "nemo_peft"), tmp_path / "nemo_peft",
                    ignore=shutil.ignore_patterns("__pycache__", "bundled"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
    mixin = tmp_path / "nemo_peft" / "core" / "mixin.py"
    mixin.write_text("import nemo_peft.convert  # noqa: F401\n" + mixin.read_text())
    result = _lint(str(tmp_path))
    assert result.returncode != 0
    assert "nemo_peft.core.mixin -> nemo_peft.convert" in result.stdout
