"""What the fine-tune recipe says at the start (the banner) and at the end (where everything went)."""
from __future__ import annotations

import glob
import os

from nemo_peft.recipes.run_log import duration, sci


def model_line(model_cfg, module) -> str:
    source = model_cfg.get("restore_from_path")
    scratch = model_cfg.get("from_scratch")
    if source:
        where = f"from {source}"
    elif scratch is not None:
        shape = ", ".join(f"{k} {scratch[k]}" for k in ("hidden_size", "d_model", "num_layers") if k in scratch)
        where = f"random init from model.from_scratch ({shape})" if shape else "random init from model.from_scratch"
    else:
        where = "the embedded SmolLM2-135M-Instruct"
    params = sum(p.numel() for p in module.model.parameters())
    return f"model: {type(module.model).__name__} ({params:,} params), {where}"


def methods_line(module) -> str:
    parts = []
    for name in module.model.adapter_names:
        configs = module.model.adapter_configs(name)
        parts.append(f"{' + '.join(type(c).__name__ for c in configs)} (adapter {name!r})")
    return "PEFT: " + "; ".join(parts)


def trainer_line(trainer_cfg, optim) -> str:
    devices, nodes = trainer_cfg.get("devices", 1), trainer_cfg.get("num_nodes", 1)
    accel = trainer_cfg.get("accelerator", "cpu")
    where = f"{devices} {accel} device(s)" + (f" x {nodes} nodes" if nodes and int(nodes) > 1 else "")
    steps = trainer_cfg.get("max_steps", -1)
    length = f"{steps} steps" if steps and steps > 0 else f"{trainer_cfg.get('max_epochs')} epoch(s)"
    schedule = "constant" if optim.scheduler == "constant" else f"{optim.scheduler} to {sci(optim.min_lr)}"
    warmup = f" after {optim.warmup_steps} warmup steps" if optim.warmup_steps else ""
    return (f"precision {trainer_cfg.get('precision', '32-true')} on {where}, {length}; AdamW lr {sci(optim.lr)}, "
            f"{schedule}{warmup}")


def banner(cfg, module, batch_line: str, trainer_cfg) -> list[str]:
    """The first lines of a run (the data summary line follows once the data is read)."""
    return [f"== {cfg.get('name', 'finetune')}: fine-tuning into {cfg.exp_manager.output_dir} ==",
            model_line(cfg.model, module), methods_line(module),
            module.model.trainable_parameters_summary().splitlines()[-1],
            trainer_line(trainer_cfg, module.optim), batch_line]


def written_lines(out_dir: str, adapter_dir: str, files: dict, log_file: str | None) -> list[str]:
    """``files``: {"metrics.csv": path, "loss.png": path, "tensorboard": dir, ...} (what exists is listed)."""
    rows = [("adapter", adapter_dir)]
    ckpts = sorted(glob.glob(os.path.join(out_dir, "checkpoints", "*.ckpt")))
    if ckpts:
        rows.append(("checkpoints", f"{os.path.dirname(ckpts[0])} ({', '.join(os.path.basename(c) for c in ckpts)})"))
    names = {"metrics.csv": "metrics", "loss.png": "loss curve", "tensorboard": "tensorboard", "wandb": "wandb",
             "mlflow": "mlflow"}
    for key, label in names.items():
        if files.get(key):
            rows.append((label, files[key]))
    if log_file:
        rows.append(("log", log_file))
    width = max(len(label) for label, _ in rows)
    lines = ["written:"] + [f"  {label:<{width}}  {path}" for label, path in rows]
    if files.get("tensorboard"):
        lines.append(f"  view the curves with: tensorboard --logdir {files['tensorboard']}")
    return lines


def timing_line(wall_s: float, train_s: float | None, steps: int) -> str:
    training = f" (training {duration(train_s)}, {steps} optimizer steps)" if train_s is not None else ""
    return f"finished in {duration(wall_s)}{training}"
