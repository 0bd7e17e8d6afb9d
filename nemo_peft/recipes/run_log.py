"""The recipes' voice: the ``nemo_peft`` logger, readable numbers, and a console free of third-party noise.

Messages go through ``logging.getLogger("nemo_peft")``. It always has one console handler that writes the
bare message to the *current* ``sys.stdout`` (so ``contextlib.redirect_stdout`` and pytest's capture see
it), and it propagates, so a handler on the root logger also gets every message: under Hydra that is the
job log file (``conf/finetune.yaml`` gives the root logger the file handler only, so nothing is printed
twice).
"""
from __future__ import annotations

import logging
import sys
import warnings

NAME = "nemo_peft"


class _CurrentStdout(logging.StreamHandler):
    """A StreamHandler bound to whatever ``sys.stdout`` is when a record is emitted."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ / setStream assign it; the property wins
        pass


def get_logger() -> logging.Logger:
    """The ``nemo_peft`` logger at INFO with its console handler (added once)."""
    log = logging.getLogger(NAME)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not any(isinstance(h, _CurrentStdout) for h in log.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    return log


def log_file() -> str | None:
    """The file the root logger writes to (Hydra's job log), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def sci(x: float | None) -> str:
    """A learning rate (or any small number) as people read it: ``2.0e-04``, not ``0.000``."""
    return "n/a" if x is None else f"{float(x):.1e}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s" if m else f"{s} s"


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_TIP_FILTER = _DropLitLoggerTip()


def quiet_third_party() -> None:
    """Silence two messages of Lightning's that are not ours to act on (both idempotent):

    - Lightning 2.6 logs a "💡 Tip: ... try installing litlogger" advertisement (INFO, through
      ``lightning.pytorch.utilities.rank_zero``) for every Trainer without a LitLogger; no option turns
      it off, so a filter on that logger drops exactly that record.
    - ``CombinedLoader`` (lightning/pytorch/utilities/_pytree.py) builds ``torch.utils._pytree.LeafSpec()``
      for every dataloader, which torch >= 2.9 marks deprecated with a FutureWarning. Our code never calls
      it and cannot avoid it (any ``Trainer.fit``/``test`` with a DataLoader triggers it), so exactly that
      warning is ignored.
    """
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _TIP_FILTER not in rank_zero.filters:
        rank_zero.addFilter(_TIP_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
