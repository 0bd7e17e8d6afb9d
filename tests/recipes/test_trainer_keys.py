"""Every trainer key a user sets works without Hydra's "+" (they are in conf/trainer)."""
import os

from hydra import compose, initialize_config_dir

from nemo_peft.recipes.build import build_trainer
from nemo_peft.recipes.hydra_args import register_resolvers

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf")


def test_strategy_accumulation_nodes_and_logger_are_plain_overrides(tmp_path):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("finetune", overrides=["model=tiny", "trainer.strategy=auto", "trainer.num_nodes=1",
                                             "trainer.accumulate_grad_batches=2", "trainer.logger=false"])
    trainer = build_trainer(cfg.trainer, str(tmp_path), None)
    assert trainer.accumulate_grad_batches == 2 and trainer.num_nodes == 1 and trainer.logger is None
