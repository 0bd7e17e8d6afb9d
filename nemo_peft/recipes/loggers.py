"""The run's metric loggers, chosen in ``exp_manager`` with NeMo's names.

- ``create_csv_logger`` (default true): Lightning's CSVLogger writing ``<output_dir>/metrics.csv`` (one flat
  file, flushed at every logged step; a resumed run appends to it, a new run replaces it).
- ``create_tensorboard_logger``: TensorBoard event files under ``<output_dir>/tensorboard/``.
- ``create_wandb_logger`` / ``create_mlflow_logger``: Weights & Biases / MLflow when installed, with
  ``wandb_logger_kwargs`` / ``mlflow_logger_kwargs`` passed to Lightning's WandbLogger / MLFlowLogger.

``trainer.logger`` (the old switch) takes only ``null`` (exp_manager decides) or ``false`` (no logger at all).
"""
from __future__ import annotations

import csv
import importlib.util
import inspect
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import OmegaConf

LOGGER_KEYS = ("create_csv_logger", "create_tensorboard_logger", "create_wandb_logger", "wandb_logger_kwargs",
               "create_mlflow_logger", "mlflow_logger_kwargs")
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
# what each optional logger needs: (packages, any one of which will do; the pip command)
NEEDS = {"tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
         "wandb": (("wandb",), "pip install wandb"),
         "mlflow": (("mlflow",), "pip install mlflow")}


class _FlatWriter(ExperimentWriter):
    """Lightning's CSV writer on ``<log_dir>/metrics.csv`` that does not warn about (or wipe) a non-empty
    directory: it replaces an old metrics.csv, or with ``append`` continues it under the same header."""

    def __init__(self, log_dir: str, append: bool):
        self._append = append
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        if self._append:
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))
        else:
            self._fs.rm_file(self.metrics_file_path)


class FlatCSVLogger(CSVLogger):
    """CSVLogger whose file is exactly ``<save_dir>/metrics.csv`` (no ``lightning_logs/version_N``) and that
    writes no ``hparams.yaml`` there (Hydra keeps the run's config under ``<output_dir>/hydra``). Set
    ``append`` before the first metric is logged to continue an existing file (a resumed run)."""

    def __init__(self, save_dir: str):
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=1)
        self.append = False

    @property
    def log_dir(self) -> str:
        return self.save_dir

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.save_dir, METRICS_FILE)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.save_dir, exist_ok=True)
            self._experiment = _FlatWriter(self.save_dir, self.append)
        return self._experiment

    def log_hyperparams(self, params=None) -> None:
        pass


def _flag(em, key: str, default: bool) -> bool:
    value = em.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValueError(f"exp_manager.{key}={value!r}; use true or false.")
    return value


def _need(kind: str, key: str) -> None:
    packages, command = NEEDS[kind]
    if not any(importlib.util.find_spec(p) for p in packages):
        raise ModuleNotFoundError(f"exp_manager.{key}=true needs the {packages[0]} package, which is not installed: "
                                  f"{command} (or pip install 'nemo_peft[{kind}]'), or set exp_manager.{key}=false.")


def _kwargs(em, key: str) -> dict:
    value = em.get(key)
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"exp_manager.{key}={value!r}; use a mapping of the logger's arguments, e.g. "
                         f"exp_manager.{key}.project=my_project (or null).")
    return {k: v for k, v in (value or {}).items() if v is not None}  # null: the default


def build_loggers(em, output_dir: str, run_name: str) -> list:
    """The loggers ``exp_manager`` asks for (a missing optional package is a clear error)."""
    loggers = []
    if _flag(em, "create_csv_logger", True):
        loggers.append(FlatCSVLogger(output_dir))
    if _flag(em, "create_tensorboard_logger", False):
        _need("tensorboard", "create_tensorboard_logger")
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(output_dir, name=TENSORBOARD_DIR, version="", default_hp_metric=False))
    if _flag(em, "create_wandb_logger", False):
        _need("wandb", "create_wandb_logger")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(**{"name": run_name, "save_dir": output_dir,
                                      **_kwargs(em, "wandb_logger_kwargs")}))
    if _flag(em, "create_mlflow_logger", False):
        _need("mlflow", "create_mlflow_logger")
        from lightning.pytorch.loggers import MLFlowLogger

        kwargs = {"experiment_name": run_name, "save_dir": os.path.join(output_dir, "mlruns"),
                  **_kwargs(em, "mlflow_logger_kwargs")}
        valid = set(inspect.signature(MLFlowLogger).parameters)
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ValueError(f"Unknown key(s) {unknown} in exp_manager.mlflow_logger_kwargs; valid keys (MLFlowLogger's "
                             f"arguments): {', '.join(sorted(valid))}.")
        loggers.append(MLFlowLogger(**kwargs))
    return loggers


def trainer_logger(value, loggers: list | None):
    """What ``lightning.Trainer(logger=...)`` gets from ``trainer.logger`` and exp_manager's loggers."""
    if value is None:
        return list(loggers) if loggers else False
    if value is False:
        return False  # no logger at all, whatever exp_manager says
    new = {"csv": "exp_manager.create_csv_logger=true (on by default: <output_dir>/metrics.csv)",
           "tensorboard": "exp_manager.create_tensorboard_logger=true (<output_dir>/tensorboard)",
           "wandb": "exp_manager.create_wandb_logger=true", "mlflow": "exp_manager.create_mlflow_logger=true"}
    hint = new.get(str(value).lower(), "exp_manager.create_csv_logger (on by default), create_tensorboard_logger, "
                                       "create_wandb_logger or create_mlflow_logger")
    raise ValueError(f"trainer.logger={value!r} is no longer a logger choice; use {hint}. trainer.logger takes only "
                     "null (exp_manager decides) or false (no logger at all).")


def set_resuming(trainer, resuming: bool) -> None:
    """A resumed run appends to its metrics.csv; a new one replaces it."""
    for logger in trainer.loggers:
        if isinstance(logger, FlatCSVLogger):
            logger.append = resuming


def where(trainer) -> dict:
    """{"metrics.csv": path, "tensorboard": dir, ...} for the loggers that write files here."""
    found = {}
    for logger in trainer.loggers:
        if isinstance(logger, FlatCSVLogger):
            found["metrics.csv"] = logger.metrics_path
        elif type(logger).__name__ == "TensorBoardLogger":
            found["tensorboard"] = logger.log_dir.rstrip(os.sep)
        elif type(logger).__name__ == "MLFlowLogger":
            found["mlflow"] = getattr(logger, "_tracking_uri", None) or "mlflow"
        elif type(logger).__name__ == "WandbLogger":
            found["wandb"] = getattr(logger, "save_dir", None) or "wandb"
    return {k: v for k, v in found.items() if v}
