"""Loss curves from ``metrics.csv`` files (Lightning's CSVLogger): train loss and evaluation metrics vs step.

``plot_runs([csv, ...], out)`` draws one or several runs overlaid (``examples/plot_metrics.py``); the fine-tune
recipe draws ``<output_dir>/loss.png`` from its own file at the end. matplotlib is optional: without it
``plot_runs`` raises ``MissingMatplotlib`` and the recipe says so in one line.
"""
from __future__ import annotations

import csv
import math
import os

from nemo_peft.core.adapter_io import atomic_write

TRAIN = "train_loss"
LOSSES = ("val_loss", "test_loss")  # drawn on the loss axes with the train loss
SCORES = ("val_exact_match", "test_exact_match")  # drawn on their own axes, in %


# validation runs during training (a curve); the test split is scored before and after it (two points)
STYLE = {"val": {"marker": "o", "linestyle": "--"}, "test": {"marker": "s", "linestyle": "none", "markersize": 8}}


def _name(key: str) -> str:
    split, _, metric = key.partition("_")
    return f"{'held-out' if split == 'test' else 'validation'} {metric.replace('_', ' ')}" + \
        (" (before / after)" if split == "test" else "")


class MissingMatplotlib(ImportError):
    pass


def read_metrics(path: str) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...] sorted by step}; a step logged twice (a resumed run) keeps its last value."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, value in row.items():
                if key == "step" or value in (None, ""):
                    continue
                try:
                    number = float(value)
                except ValueError:
                    continue
                if math.isfinite(number):
                    series.setdefault(key, {})[step] = number
    return {k: sorted(v.items()) for k, v in series.items()}


def _label(path: str, paths: list[str]) -> str:
    """A short name for a run: its directory name, or the path when several runs share it."""
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    names = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    return name if names.count(name) == 1 else path


def plot_runs(paths: list[str], out: str, labels: list[str] | None = None, title: str | None = None) -> str:
    """Draw ``paths``' metrics.csv files overlaid into the PNG ``out`` (written atomically); returns ``out``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingMatplotlib("drawing loss curves needs matplotlib: pip install matplotlib") from e
    if not paths:
        raise ValueError("plot_runs needs at least one metrics.csv.")
    labels = labels or [_label(p, paths) for p in paths]
    runs = [(label, read_metrics(p)) for label, p in zip(labels, paths)]
    has_scores = any(k in m for _, m in runs for k in SCORES)
    fig, axes = plt.subplots(1, 2 if has_scores else 1, figsize=(12 if has_scores else 7, 4.5), squeeze=False)
    loss_ax = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, metrics) in enumerate(runs):
        color = colors[i % len(colors)]
        prefix = f"{label}: " if len(runs) > 1 else ""
        if TRAIN in metrics:
            steps, values = zip(*metrics[TRAIN])
            loss_ax.plot(steps, values, color=color, label=f"{prefix}train loss")
        for keys, ax in ((LOSSES, loss_ax), (SCORES if has_scores else (), axes[0][-1])):
            for key in keys:
                if key in metrics:
                    steps, values = zip(*metrics[key])
                    ax.plot(steps, values, color=color, label=f"{prefix}{_name(key)}", **STYLE[key.split("_")[0]])
    losses = [v for _, m in runs for k in (TRAIN, *LOSSES) for _, v in m.get(k, [])]
    log_scale = bool(losses) and min(losses) > 0 and max(losses) / min(losses) > 30  # a fast fall stays readable
    if log_scale:
        loss_ax.set_yscale("log")
    loss_ax.set(xlabel="optimizer step", ylabel="loss (mean over trained tokens)" + (", log scale" if log_scale else ""),
                title=title or "loss")
    loss_ax.grid(alpha=0.3)
    if loss_ax.get_legend_handles_labels()[0]:
        loss_ax.legend(fontsize="small")
    if has_scores:
        ax = axes[0][1]
        ax.set(xlabel="optimizer step", ylabel="exact match (%)", title="held-out exact match", ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return out


def draw_loss(trainer, metrics_csv: str | None, out: str) -> tuple[str | None, str | None]:
    """The fine-tune recipe's ``loss.png`` from its own metrics.csv: (the path or None, a line to say or None).
    Nothing without a CSV logger; one line, not a failure, without matplotlib or without logged rows."""
    if not metrics_csv:
        return None, None
    for logger in trainer.loggers:
        logger.save()  # flush what is still buffered
    if not os.path.isfile(metrics_csv) or not read_metrics(metrics_csv):
        return None, f"loss.png not drawn: {metrics_csv} holds no metrics (trainer.log_every_n_steps > steps run?)"
    try:
        return plot_runs([metrics_csv], out, labels=["this run"]), None
    except MissingMatplotlib as e:
        return None, f"loss.png not drawn: {e}"
