"""Saved tensors that backward rebuilds instead of keeping: ``rebuilt_in_backward(t, rebuild)``.

A LoRA adapter's A matrix needs its input in backward, and autograd keeps that input alive from
forward to backward. When the input is cheap to rebuild from tensors backward keeps anyway (a
norm's output from the norm's input; SwiGLU's output from [gate | up]), keeping it only costs
memory: per layer of a 4 x 256 SmolLM2 batch, two normed hidden states and the 1536-wide SwiGLU
output, 10.5 MiB of 37. Inside the context, a tensor saved for backward that *is* ``t`` (same
storage, same elements, e.g. the 2-D view a matmul saves) is stored as a recipe and rebuilt by
``rebuild()`` when backward asks for it; every other saved tensor is kept as usual. The rebuilt
values are bitwise the forward's (the same ops on the same inputs), so gradients are unchanged.
``rebuild`` must hold its inputs (``functools.partial(norm, x)``): a lambda would read ``x`` when
backward runs, after the forward may have rebound the name.

Under other saved-tensor hooks (activation checkpointing, offloading) this does nothing: hooks
nest, and the innermost would keep what checkpointing meant to drop.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable

import torch


class _Rebuild:
    __slots__ = ("shape", "rebuild")

    def __init__(self, shape, rebuild):
        self.shape, self.rebuild = shape, rebuild


_local = threading.local()  # the tensors of the open contexts: one set of hooks serves nested contexts


def _entries() -> list:
    if not hasattr(_local, "entries"):
        _local.entries = []
    return _local.entries


def _pack(saved: torch.Tensor):
    for ptr, offset, numel, rebuild in _entries():
        if (saved.numel() == numel and saved.is_contiguous() and saved.storage_offset() == offset
                and saved.untyped_storage().data_ptr() == ptr):
            return _Rebuild(saved.shape, rebuild)
    return saved


def _unpack(packed):
    if isinstance(packed, _Rebuild):
        with torch.no_grad():
            return packed.rebuild().view(packed.shape)
    return packed


def _top_hooks():
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else ("unknown",)  # unknown: assume others', stay out of the way


_NOTHING_TO_SAVE = contextlib.nullcontext()


def rebuilt_in_backward(t: torch.Tensor, rebuild: Callable[[], torch.Tensor]) -> contextlib.AbstractContextManager:
    """Within the block, autograd saves ``t`` as ``rebuild`` (called without grad in backward)."""
    # no autograd (a decoded token passes here twice per layer): a shared no-op, not a generator per call;
    # under the compiler, it decides what to save (and recomputes cheap ops)
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return _NOTHING_TO_SAVE
    return _saved_as_recipe(t, rebuild)


@contextlib.contextmanager
def _saved_as_recipe(t: torch.Tensor, rebuild: Callable[[], torch.Tensor]):
    top = _top_hooks()
    ours = top is not None and top[0] is _pack
    if not t.is_contiguous() or (top is not None and not ours):  # (autograd is on: the caller checked)
        yield
        return
    entries = _entries()
    entries.append((t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), rebuild))
    try:
        if ours:
            yield
        else:
            with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
                yield
    finally:
        entries.pop()
