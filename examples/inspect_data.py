"""Show what fine-tuning will train on: examples with the trained tokens marked, and per split how
many examples were read, dropped, truncated or left with no trained token, their lengths and the
padding unpacked vs packed. Takes the same data and model groups as finetune.py.

    python examples/inspect_data.py                      # the bundled task on the default model
    python examples/inspect_data.py data=chat_dates num_examples=2
"""
import hydra

from nemo_peft.recipes.hydra_args import register_resolvers
from nemo_peft.recipes.inspect_data import run_inspect

register_resolvers()


@hydra.main(config_path="../conf", config_name="inspect_data", version_base="1.3")
def main(cfg):
    run_inspect(cfg)


if __name__ == "__main__":
    main()
