"""Fine-tune a GPT model with PEFT. No arguments: LoRA on SmolLM2-135M-Instruct, bundled task.

    python examples/finetune.py trainer.max_steps=50 model.peft.lora_tuning.dim=8
"""
import sys

import hydra

from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers
from nemo_peft.recipes.finetune import run_finetune

register_resolvers()


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg):
    run_finetune(cfg)


if __name__ == "__main__":
    sys.argv = peft_scheme_args(sys.argv)
    main()
