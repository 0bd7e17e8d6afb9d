"""Merge a trained adapter into its base model and write one checkpoint.

    nemo-peft merge --adapter results/finetune/adapter --output merged_model
    nemo-peft merge --base-model my.gguf --adapter hf_peft_dir --output merged --format native

The output (default: Hugging Face format) loads with transformers.AutoModelForCausalLM,
vLLM, or nemo_peft's load_pretrained, and gives the adapted model's logits.
(``python examples/merge.py`` takes the same arguments.)
"""
from __future__ import annotations

import argparse


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "nemo-peft merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="default", help="GGUF file, HF dir or nemo_peft dir")
    parser.add_argument("--adapter", required=True, help="adapter directory (ours or HF PEFT)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--format", default="hf", choices=["hf", "native"])
    parser.add_argument("--model-type", default=None, choices=["gpt2", "llama", "mistral", "qwen2"])
    args = parser.parse_args(argv)
    from nemo_peft.recipes.merge import merge_to_checkpoint

    merge_to_checkpoint(args.base_model, args.adapter, args.output, args.format, args.model_type)
    return 0
