"""``python -m nemo_peft COMMAND ...``: the ``nemo-peft`` command, where the console script is not on PATH."""
from nemo_peft.cli import console

if __name__ == "__main__":
    console()
