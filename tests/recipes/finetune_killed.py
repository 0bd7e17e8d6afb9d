"""``examples/finetune.py`` whose every process SIGKILLs itself at the end of optimizer step
``$KILL_AT_STEP`` (checkpoints of earlier steps are on disk): a crash for the resume tests.
Lightning starts the other processes by re-running this script, with the same environment."""
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import hydra  # noqa: E402
import lightning as L  # noqa: E402

from nemo_peft.recipes import finetune as ft  # noqa: E402
from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers  # noqa: E402


class KillAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


_build = ft.build_trainer


def _build_with_kill(*args, **kwargs):
    trainer = _build(*args, **kwargs)
    trainer.callbacks.insert(0, KillAt(int(os.environ["KILL_AT_STEP"])))
    return trainer


ft.build_trainer = _build_with_kill
register_resolvers()


@hydra.main(config_path=os.path.join(ROOT, "conf"), config_name="finetune", version_base="1.3")
def main(cfg):
    ft.run_finetune(cfg)


if __name__ == "__main__":
    sys.argv = peft_scheme_args(sys.argv)
    main()
