"""Convert LoRA adapters between nemo_peft and Hugging Face PEFT (what peft and vLLM load).

    python examples/export.py --to-hf-peft --base-model BASE --adapter results/finetune/adapter \
        --output hf_adapter --base-model-name HuggingFaceTB/SmolLM2-135M-Instruct
    python examples/export.py --from-hf-peft --base-model BASE --adapter hf_adapter --output our_adapter
    python examples/export.py --from-checkpoint results/finetune/checkpoints/last.ckpt --output recovered_adapter

--from-checkpoint recovers the adapter of a training run from its Lightning checkpoint (no base
model needed). BASE is a GGUF file, a Hugging Face checkpoint directory or a nemo_peft model directory
("default" = the embedded SmolLM2-135M-Instruct GGUF). The same as ``nemo-peft export ...``
(nemo_peft/cli/export.py).
"""
import sys

from nemo_peft.cli.export import main as _export


def main(argv=None):
    return _export(argv, prog="examples/export.py")


if __name__ == "__main__":
    sys.exit(main())
