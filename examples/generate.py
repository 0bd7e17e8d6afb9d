"""Generate answers for a JSONL file with a base model and (optionally) a saved adapter.

    python examples/generate.py adapter_path=results/finetune/adapter \
        data.predict_ds.file_names=[my.jsonl] output_file=predictions.jsonl

The same as ``nemo-peft generate ...`` (nemo_peft/cli), over the same conf/.
"""
import sys

from nemo_peft.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
