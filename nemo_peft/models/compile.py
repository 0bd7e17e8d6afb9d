"""``model.compile: true``: each transformer block through ``torch.compile`` (inductor), opt-in.

The blocks are compiled in place (``nn.Module.compile``), so parameter names, adapter saving and
loading are unchanged. Under compilation the memory-lean autograd functions step aside for the
plain ops (``torch.compiler.is_compiling``): inductor fuses the elementwise chains (RoPE, SwiGLU,
norms) and its partitioner chooses what backward keeps. On CPU inductor writes C++ and needs a
compiler; the first step of each new shape pays the compilation (tens of seconds on 2 cores).
"""
from __future__ import annotations

import os
import shutil


def compile_blocks(model) -> None:
    """Compile every block ``model.fsdp_units()`` lists (the transformer layers), in place."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        cxx = os.environ.get("CXX", "c++")
        if shutil.which(cxx) is None:
            raise RuntimeError(f"model.compile=true needs a C++ compiler on CPU (torch.compile's inductor writes "
                               f"C++), and {cxx!r} is not on PATH: install one (e.g. apt-get install g++) or set "
                               "model.compile=false.")
    for block in model.fsdp_units():
        block.compile()
