"""Generate answers for a JSONL file with a base model and (optionally) a saved adapter.

    python examples/generate.py adapter_path=results/finetune/adapter \
        data.predict_ds.file_names=[my.jsonl] output_file=predictions.jsonl
"""
import sys

import hydra

from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers
from nemo_peft.recipes.generate import run_generate

register_resolvers()


@hydra.main(config_path="../conf", config_name="generate", version_base="1.3")
def main(cfg):
    run_generate(cfg)


if __name__ == "__main__":
    sys.argv = peft_scheme_args(sys.argv)
    main()
