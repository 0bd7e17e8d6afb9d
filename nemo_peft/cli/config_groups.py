"""Where the Hydra configs are, and what their groups offer, read from the YAML files alone (no torch,
no Hydra), so that ``nemo-peft --help`` answers at once.

The configs live in the checkout's top-level ``conf/`` (the single source); ``setup.py`` ships that
directory inside the package as ``nemo_peft/conf`` for wheel installs.
"""
from __future__ import annotations

import os
import re

import yaml

GROUPS = ("model", "peft", "data", "trainer")


def config_dir() -> str:
    """``nemo_peft/conf`` in an installed wheel, else the checkout's ``conf/`` (editable installs, a plain checkout)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for candidate in (os.path.join(package, "conf"), os.path.join(os.path.dirname(package), "conf")):
        if os.path.isfile(os.path.join(candidate, "finetune.yaml")):
            return candidate
    raise FileNotFoundError(f"nemo_peft's Hydra configs are missing: no finetune.yaml in {package}/conf or in "
                            f"{os.path.dirname(package)}/conf. Reinstall nemo_peft (pip install nemo_peft).")


def _read(path: str) -> tuple[dict, str]:
    """(the YAML's mapping, its leading comment as one line)."""
    with open(path) as f:
        text = f.read()
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    return yaml.safe_load(text) or {}, " ".join(comment)


def describe(comment: str, width: int = 76) -> str:
    """The first sentence of a YAML's leading comment, at most ``width`` characters."""
    first = re.split(r"(?<=[a-z0-9)])\.\s", comment + " ", maxsplit=1)[0].strip().rstrip(".")
    return first if len(first) <= width else first[:width - 1].rstrip() + "…"


def defaults_of(config: str) -> dict[str, str]:
    """The group choices in ``conf/<config>.yaml``'s defaults list, e.g. {"model": "smollm2", "peft": "lora"}."""
    cfg, _ = _read(os.path.join(config_dir(), f"{config}.yaml"))
    chosen = {}
    for entry in cfg.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                chosen[key.split("@")[0]] = value
    return chosen


def options(group: str) -> dict[str, str]:
    """Option name -> one-line description, for each YAML of ``conf/<group>/``. In ``peft``, only files
    that name a method (``peft_scheme``) are options: anything else there is not a PEFT method."""
    folder = os.path.join(config_dir(), group)
    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".yaml"):
            continue
        cfg, comment = _read(os.path.join(folder, name))
        if group == "peft" and not cfg.get("peft_scheme"):
            continue
        out[name[:-5]] = _trainer_line(cfg) if group == "trainer" else describe(comment)
    return out


def _trainer_line(cfg: dict) -> str:
    """A trainer option's main settings (those it sets itself; the rest comes from the option it extends)."""
    keys = ("accelerator", "strategy", "devices", "precision")
    return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)


def config_value(config: str, dotted: str):
    """A key's value as written in ``conf/<config>.yaml`` or in the default option of its group
    (``trainer.max_steps`` -> conf/trainer/cpu.yaml's max_steps); None when neither sets it."""
    head, _, rest = dotted.partition(".")
    root, _ = _read(os.path.join(config_dir(), f"{config}.yaml"))
    found = _get(root, dotted)
    if found is not None:
        return found
    chosen = defaults_of(config)
    if head == "model" and rest.startswith("peft.") and "peft" in chosen:
        group, option, rest = "peft", chosen["peft"], rest[len("peft."):]
    elif head in chosen:
        group, option = head, chosen[head]
    else:
        return None
    cfg, _ = _read(os.path.join(config_dir(), group, f"{option}.yaml"))
    return _get(cfg, rest)


def _get(cfg: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg
