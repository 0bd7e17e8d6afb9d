"""Convert LoRA adapters between nemo_peft and Hugging Face PEFT (what peft and vLLM load).

    python examples/export.py --to-hf-peft --base-model BASE --adapter results/finetune/adapter \
        --output hf_adapter --base-model-name HuggingFaceTB/SmolLM2-135M-Instruct
    python examples/export.py --from-hf-peft --base-model BASE --adapter hf_adapter --output our_adapter

BASE is a GGUF file, a Hugging Face checkpoint directory or a nemo_peft model directory
("default" = the embedded SmolLM2-135M-Instruct GGUF).
"""
import argparse

from nemo_peft.recipes.export import from_hf_peft, to_hf_peft


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--to-hf-peft", action="store_true", help="our adapter dir -> HF PEFT dir")
    mode.add_argument("--from-hf-peft", action="store_true", help="HF PEFT dir -> our adapter dir")
    parser.add_argument("--base-model", default="default", help="GGUF file, HF dir or nemo_peft model dir")
    parser.add_argument("--adapter", required=True, help="input adapter directory")
    parser.add_argument("--output", required=True, help="output adapter directory")
    parser.add_argument("--name", default=None, help="adapter name (default: the only one / 'default')")
    parser.add_argument("--base-model-name", default=None,
                        help="base_model_name_or_path written for --to-hf-peft (default: --base-model)")
    parser.add_argument("--model-type", default=None, choices=["gpt2", "llama", "mistral", "qwen2"],
                        help="HF module naming for --to-hf-peft (default: the base model's family)")
    args = parser.parse_args(argv)
    if args.to_hf_peft:
        to_hf_peft(args.base_model, args.adapter, args.output, args.base_model_name, args.name, args.model_type)
    else:
        from_hf_peft(args.base_model, args.adapter, args.output, args.name or "default")


if __name__ == "__main__":
    main()
