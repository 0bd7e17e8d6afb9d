"""The Hydra commands (finetune, estimate, generate, inspect-data): the packaged configs, the same
overrides and the same Hydra behaviour as ``examples/*.py`` (run directory, job log, ``--cfg``, ``-m``).

``+estimate_only=true`` (and the ``estimate`` command) composes the config with Hydra's compose API
instead, so nothing at all is written: Hydra's run directory lies under the output directory.
"""
from __future__ import annotations

import os
import sys
import traceback

from nemo_peft.cli.config_groups import config_dir

# command -> (config name, "module:function" run with the composed config, rewrite model.peft.peft_scheme)
RECIPES = {
    "finetune": ("finetune", "nemo_peft.recipes.finetune:run_finetune", True),
    "estimate": ("finetune", "nemo_peft.recipes.estimate:run_estimate", True),
    "generate": ("generate", "nemo_peft.recipes.generate:run_generate", True),
    "inspect-data": ("inspect_data", "nemo_peft.recipes.inspect_data:run_inspect", False),
}
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "null")
COMMAND_ENV = "NEMO_PEFT_COMMAND"  # the command a process started by Lightning's DDP launcher runs


def _recipe(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def split_estimate_only(overrides: list[str]) -> tuple[bool, list[str]]:
    """(whether ``estimate_only`` is asked for, the overrides without it). ``+estimate_only=true``,
    ``++estimate_only=true`` and ``estimate_only=true`` all ask; a value other than a boolean is an error."""
    wanted, rest = False, []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") == "estimate_only":
            value = value.strip().strip("'\"").lower()
            if value not in TRUE + FALSE:
                raise ValueError(f"{arg}: estimate_only takes true or false.")
            wanted = value in TRUE
        else:
            rest.append(arg)
    return wanted, rest


def compose(config: str, overrides: list[str]):
    """The config ``examples/<config>.py OVERRIDES`` would run, without Hydra's run directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from nemo_peft.recipes.hydra_args import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config, overrides=overrides)


def run(command: str, overrides: list[str]) -> int:
    config, target, scheme_args = RECIPES[command]
    try:
        estimate_only, overrides = split_estimate_only(overrides)
        if scheme_args:
            from nemo_peft.recipes.hydra_args import peft_scheme_args

            overrides = peft_scheme_args(overrides)
    except ValueError as e:
        print(f"nemo-peft {command}: {e}", file=sys.stderr)
        return 2
    # the recipe (and Lightning, ~10 s to import on 2 cores) is imported once Hydra has composed the
    # config, so a config Hydra rejects is reported at once
    if command == "estimate" or estimate_only:
        return _composed(command, RECIPES["estimate"][1], config, overrides)
    return _hydra_main(command, target, config, overrides)


def _composed(command: str, target: str, config: str, overrides: list[str]) -> int:
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        print(f"nemo-peft {command}: Hydra flags ({' '.join(flags)}) do not apply to an estimate; "
              "pass KEY=VALUE overrides only.", file=sys.stderr)
        return 2
    try:
        cfg = compose(config, overrides)
        _recipe(target)(cfg)
    except Exception as e:  # noqa: BLE001 - a command line's error: the message, as Hydra prints it
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        else:
            print(f"Error: {type(e).__name__}: {e}\nSet the environment variable HYDRA_FULL_ERROR=1 for a "
                  "complete stack trace.", file=sys.stderr)
        return 1
    return 0


def _hydra_main(command: str, target: str, config: str, overrides: list[str]) -> int:
    """``@hydra.main`` over the packaged configs, as ``examples/<config>.py`` runs it. The job keeps the
    example's name (``<output_dir>/hydra/.../<config>.log``). Lightning's DDP launcher starts the other
    processes again from ``sys.argv`` (the script, the overrides and its own Hydra overrides): argv[0] stays
    the script that was run, and ``COMMAND_ENV`` tells a console script's children which command they run."""
    import hydra

    from nemo_peft.recipes.hydra_args import register_resolvers

    register_resolvers()

    def task(cfg):
        _recipe(target)(cfg)

    task.__module__ = f"nemo_peft.cli.{config}"  # Hydra names the job after the module's last part
    task = hydra.main(config_path=config_dir(), config_name=config, version_base="1.3")(task)
    saved, env = sys.argv, os.environ.get(COMMAND_ENV)
    sys.argv = [saved[0] if saved else "nemo-peft", *overrides]
    os.environ[COMMAND_ENV] = command
    try:
        task()
    finally:
        sys.argv = saved
        if env is None:
            os.environ.pop(COMMAND_ENV, None)
        else:
            os.environ[COMMAND_ENV] = env
    return 0
