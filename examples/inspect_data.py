"""Show what fine-tuning will train on: examples with the trained tokens marked, and per split how
many examples were read, dropped, truncated or left with no trained token, their lengths and the
padding unpacked vs packed. Takes the same data and model groups as finetune.py.

    python examples/inspect_data.py                      # the bundled task on the default model
    python examples/inspect_data.py data=chat_dates num_examples=2

The same as ``nemo-peft inspect-data ...`` (nemo_peft/cli), over the same conf/.
"""
import sys

from nemo_peft.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect-data", *sys.argv[1:]]))
