"""What a finetune config may hold at its root and in exp_manager, and the batch arithmetic of a run:
shared by the recipe (finetune.py) and its pre-flight estimate (estimate.py)."""
from __future__ import annotations

from omegaconf import DictConfig, open_dict

from nemo_peft.recipes.build import to_dict
from nemo_peft.recipes.loggers import LOGGER_KEYS
from nemo_peft.recipes.strategies import accumulation, data_parallel_size

ROOT_KEYS = ("name", "seed", "eval_before", "exp_manager", "model", "data", "trainer", "estimate")
EXP_MANAGER_KEYS = ("output_dir", "adapter_dir", "resume_from_checkpoint", "resume_if_exists", "overwrite",
                    "checkpoint", *LOGGER_KEYS)


def batch_arithmetic(cfg: DictConfig) -> tuple[DictConfig, str]:
    """(the trainer section with accumulate_grad_batches derived from model.global_batch_size, and the
    line that states the arithmetic)."""
    trainer_cfg = cfg.trainer.copy()
    kwargs = to_dict(trainer_cfg)
    train = cfg.data.get("train_ds") or {}
    micro = int(train.get("micro_batch_size", 4))
    accumulate = accumulation(cfg.model.get("global_batch_size"), micro, kwargs)
    with open_dict(trainer_cfg):
        trainer_cfg.accumulate_grad_batches = accumulate
    dp = data_parallel_size(kwargs)
    return trainer_cfg, (f"global batch {micro * dp * accumulate} = micro batch {micro} x {dp} data-parallel "
                         f"process(es) x {accumulate} accumulation step(s); loss = mean over its trained tokens")
