"""Fine-tune a GPT model with PEFT. No arguments: LoRA on SmolLM2-135M-Instruct, bundled task.

    python examples/finetune.py trainer.max_steps=50 model.peft.lora_tuning.dim=8
    python examples/finetune.py +estimate_only=true      # the pre-flight estimate only: nothing is trained
    python examples/finetune.py --help                   # config groups and the most used overrides

The same as ``nemo-peft finetune ...`` (nemo_peft/cli), over the same conf/.
"""
import sys

from nemo_peft.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
