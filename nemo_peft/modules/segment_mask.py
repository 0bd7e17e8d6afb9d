"""Packed rows: several examples in one row, told apart by segment ids (1, 2, ... per example, 0 on
padding). Positions restart at each example and attention never crosses examples, so every example
sees exactly what it would see alone in its own row."""
from __future__ import annotations

import torch


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] counting from 0 at the start of each run of equal segment ids."""
    t = segment_ids.shape[1]
    index = torch.arange(t, device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    # the index where each position's run began: a running max of the start indices
    run_start = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return index - run_start


def segment_attention_mask(segment_ids: torch.Tensor, sliding_window: int | None = None) -> torch.Tensor:
    """Boolean [B, 1, T, T] mask (True = attend): block-diagonal causal over the segments.

    A query sees the earlier keys of its own segment (and, with ``sliding_window`` W, only the last W
    of them, as ``models.gpt``'s mask). Padding (segment 0) sees only itself: some SDPA kernels return
    NaN for a query that sees nothing, which would reach the gradients though padding has no loss.
    """
    t = segment_ids.shape[1]
    pos = torch.arange(t, device=segment_ids.device)
    causal = pos[None, :] <= pos[:, None]  # [T(query), T(key)]
    if sliding_window is not None:
        causal = causal & (pos[None, :] > pos[:, None] - sliding_window)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, T]
    real = (segment_ids != 0)[:, None, :]
    mask = (same & real & causal) | torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return mask[:, None]
