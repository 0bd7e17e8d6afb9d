"""The optimizer options of the SFT modules (``model.optim``) and their learning-rate schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

from nemo_peft.models.config import check_keys


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 0
    scheduler: str = "cosine"  # "cosine" | "linear" | "constant"
    min_lr: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "OptimConfig":
        d = check_keys(cls, d or {}, "optim")
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        cfg = cls(**d)
        if cfg.scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"optim.scheduler={cfg.scheduler!r} (model.optim.scheduler); use 'cosine', 'linear' "
                             "or 'constant'.")
        return cfg


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warmup, then cosine/linear decay to min_lr (as a factor of lr)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.scheduler == "constant" or total <= cfg.warmup_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.scheduler == "cosine" else 1 - progress
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * decay
