"""The training progress bar: counted in optimizer steps when training by ``trainer.max_steps``.

Lightning's RichProgressBar counts the batches of an epoch and titles the bar ``Epoch 0/-2`` when
``max_epochs=-1``; its metrics print with three decimals, so an lr of 2e-4 reads ``lr: 0.000``. This bar
reads ``step 37/100 ━━━━━━ 0:01:02 • 0:01:45 loss: 1.234 lr: 2.0e-04 tok/s: 2,167`` (elapsed • ETA).
"""
from __future__ import annotations

import sys

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

from nemo_peft.recipes.run_log import sci

if _RICH_AVAILABLE:  # Lightning's own test; its rich columns exist only then
    from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn, ProcessingSpeedColumn
    from rich.progress import BarColumn, ProgressColumn
else:  # pragma: no cover
    ProgressColumn = object

# what the train bar shows, in this order
SHOWN = {"train_loss": "loss", "lr": "lr", "tokens_per_s": "tok/s", "val_loss": "val_loss",
         "val_exact_match": "val_em%"}


class _NotOnTrain(ProgressColumn):
    """Another column, left empty on the train bar (whose title counts the steps and whose metrics give tok/s)."""

    def __init__(self, bar: "StepProgressBar", column: ProgressColumn):
        super().__init__()
        self.bar, self.column = bar, column

    def render(self, task):
        if self.bar.by_steps and task.id == self.bar.train_progress_bar_id:
            return ""
        return self.column.render(task)


class StepProgressBar(RichProgressBar):
    def __init__(self):
        # not a terminal (a log file, a notebook, a test): a wider line than rich's 80 columns, so the metrics
        # do not wrap
        super().__init__(console_kwargs=None if sys.stdout.isatty() else {"width": 140})

    @property
    def by_steps(self) -> bool:
        return self._trainer is not None and self._trainer.max_steps > 0

    def _get_train_description(self, current_epoch: int) -> str:
        if self.by_steps:
            return f"step {self.trainer.global_step}/{self.trainer.max_steps}"
        epochs = self.trainer.max_epochs
        return f"epoch {current_epoch}" + (f"/{epochs - 1}" if epochs and epochs > 0 else "")

    def configure_columns(self, trainer) -> list:
        columns = super().configure_columns(trainer)
        for c in columns:
            if isinstance(c, BarColumn):
                c.bar_width = 30
        return [_NotOnTrain(self, c) if isinstance(c, (BatchesProcessedColumn, ProcessingSpeedColumn)) else c
                for c in columns]

    def _show_steps(self, trainer) -> None:
        if self.progress is None or self.train_progress_bar_id is None or not self.by_steps:
            return
        description = self._get_train_description(trainer.current_epoch)
        self.progress.update(self.train_progress_bar_id, total=trainer.max_steps, completed=trainer.global_step,
                             description=f"[{self.theme.description}]{description}" if self.theme.description
                             else description)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_steps(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._show_steps(trainer)
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        shown = {}
        for key, label in SHOWN.items():
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                shown[label] = sci(value) if key == "lr" else f"{value:,.0f}" if key == "tokens_per_s" else \
                    f"{value:.1f}" if key == "val_exact_match" else f"{value:.4g}"  # a loss of 2e-4 is not 0.000
        return shown


def step_progress_bar() -> list:
    """[StepProgressBar()] when rich is installed (Lightning's own choice then), else [] (Lightning's tqdm bar)."""
    return [StepProgressBar()] if _RICH_AVAILABLE else []
