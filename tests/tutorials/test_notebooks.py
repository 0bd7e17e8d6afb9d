"""Every notebook in tutorials/ runs top to bottom: in fast mode (NEMO_PEFT_TUTORIAL_FAST=1: fewer steps and
examples) in the default suite, at full length under ``-m slow``. A cell that raises fails the test, and so
does a stated result that is not reached: the notebooks assert their own claims (e.g. the exact-match lift)."""
import glob
import os

import pytest

from tests.helpers import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "tutorials", "*.ipynb")))
FAST_TIMEOUT_S, FULL_TIMEOUT_S = 600, 3600


def execute(path: str, cwd, fast: bool, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    # the kernel inherits this process's environment
    monkeypatch.setenv("NEMO_PEFT_TUTORIAL_FAST", "1" if fast else "0")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    client = nbclient.NotebookClient(notebook, timeout=FAST_TIMEOUT_S if fast else FULL_TIMEOUT_S,
                                     kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()


def test_every_tutorial_is_linked_from_the_readme():
    names = [os.path.basename(p) for p in NOTEBOOKS]
    assert len(names) == 8, names
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert all(f"tutorials/{n}" in readme for n in names), "README links each tutorial"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
    execute(path, tmp_path, fast=True, monkeypatch=monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_at_full_length(path, tmp_path, monkeypatch):
    execute(path, tmp_path, fast=False, monkeypatch=monkeypatch)
