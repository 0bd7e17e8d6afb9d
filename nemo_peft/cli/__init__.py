"""The ``nemo-peft`` command (installed by ``pip install``): ``nemo-peft COMMAND [ARGS ...]``.

finetune, estimate, generate and inspect-data take the Hydra overrides of ``examples/*.py`` over the
configs packaged with the code; merge and export take the arguments of ``examples/merge.py`` and
``examples/export.py``. The examples call this same code.
"""
from __future__ import annotations

import difflib
import os
import sys

from nemo_peft.cli.help import COMMANDS, command_help, main_help

HELP = ("-h", "--help")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    relaunched = os.environ.get("NEMO_PEFT_COMMAND")  # set by cli/hydra_command.py for Lightning's DDP launcher
    if relaunched in COMMANDS and os.environ.get("LOCAL_RANK", "0") != "0" and argv and argv[0] not in COMMANDS:
        argv = [relaunched, *argv]  # a process Lightning started again from `nemo-peft`'s argv (no command in it)
    if not argv or argv[0] in HELP:
        print(main_help())
        return 0
    if argv[0] == "--version":
        from nemo_peft import __version__

        print(f"nemo-peft {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"nemo-peft: unknown command {command!r}{hint}; valid commands: {', '.join(COMMANDS)}. "
              "See nemo-peft --help.", file=sys.stderr)
        return 2
    if command == "merge":
        from nemo_peft.cli.merge import main as merge_main

        return merge_main(rest)
    if command == "export":
        from nemo_peft.cli.export import main as export_main

        return export_main(rest)
    if any(arg in HELP for arg in rest):
        print(command_help(command))
        return 0
    from nemo_peft.cli.hydra_command import run

    return run(command, rest)


def console() -> None:
    """The console script's entry point."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `nemo-peft --help | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
