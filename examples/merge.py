"""Merge a trained adapter into its base model and write one checkpoint.

    python examples/merge.py --adapter results/finetune/adapter --output merged_model
    python examples/merge.py --base-model my.gguf --adapter hf_peft_dir --output merged --format native

The output (default: Hugging Face format) loads with transformers.AutoModelForCausalLM,
vLLM, or nemo_peft's load_pretrained, and gives the adapted model's logits.
The same as ``nemo-peft merge ...`` (nemo_peft/cli/merge.py).
"""
import sys

from nemo_peft.cli.merge import main as _merge


def main(argv=None):
    return _merge(argv, prog="examples/merge.py")


if __name__ == "__main__":
    sys.exit(main())
