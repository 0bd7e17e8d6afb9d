"""Convert LoRA adapters between nemo_peft and Hugging Face PEFT (what peft and vLLM load).

    nemo-peft export --to-hf-peft --base-model BASE --adapter results/finetune/adapter \
        --output hf_adapter --base-model-name HuggingFaceTB/SmolLM2-135M-Instruct
    nemo-peft export --from-hf-peft --base-model BASE --adapter hf_adapter --output our_adapter
    nemo-peft export --from-checkpoint results/finetune/checkpoints/last.ckpt --output recovered_adapter

--from-checkpoint recovers the adapter of a training run from its Lightning checkpoint (no base
model needed). BASE is a GGUF file, a Hugging Face checkpoint directory or a nemo_peft model directory
("default" = the embedded SmolLM2-135M-Instruct GGUF). (``python examples/export.py`` takes the same arguments.)
"""
from __future__ import annotations

import argparse


def main(argv=None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "nemo-peft export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--to-hf-peft", action="store_true", help="our adapter dir -> HF PEFT dir")
    mode.add_argument("--from-hf-peft", action="store_true", help="HF PEFT dir -> our adapter dir")
    mode.add_argument("--from-checkpoint", metavar="CKPT", help="Lightning .ckpt of a run -> our adapter dir")
    parser.add_argument("--base-model", default="default", help="GGUF file, HF dir or nemo_peft model dir")
    parser.add_argument("--adapter", help="input adapter directory (--to-hf-peft, --from-hf-peft)")
    parser.add_argument("--output", required=True, help="output adapter directory")
    parser.add_argument("--name", default=None, help="adapter name (default: the only one / 'default')")
    parser.add_argument("--base-model-name", default=None,
                        help="base_model_name_or_path written for --to-hf-peft (default: the Hub id in the "
                             "GGUF's metadata, e.g. HuggingFaceTB/SmolLM2-135M-Instruct, else --base-model)")
    parser.add_argument("--model-type", default=None, choices=["gpt2", "llama", "mistral", "qwen2"],
                        help="HF module naming for --to-hf-peft (default: the base model's family)")
    parser.add_argument("--overwrite", action="store_true",
                        help="--from-checkpoint: replace an adapter already in --output")
    args = parser.parse_args(argv)
    from nemo_peft.recipes.export import from_checkpoint, from_hf_peft, to_hf_peft

    if args.from_checkpoint:
        from_checkpoint(args.from_checkpoint, args.output, overwrite=args.overwrite)
    elif args.adapter is None:
        parser.error("--adapter is required with --to-hf-peft and --from-hf-peft")
    elif args.to_hf_peft:
        to_hf_peft(args.base_model, args.adapter, args.output, args.base_model_name, args.name, args.model_type)
    else:
        from_hf_peft(args.base_model, args.adapter, args.output, args.name or "default")
    return 0
