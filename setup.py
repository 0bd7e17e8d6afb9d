from setuptools import find_packages, setup

setup(
    name="nemo_peft",
    version="0.1.0",
    description="Parameter-efficient fine-tuning (LoRA and friends) for GPT- and T5-style models, NeMo style.",
    python_requires=">=3.10",
    packages=find_packages(include=["nemo_peft", "nemo_peft.*"]),
    package_data={"nemo_peft.data": ["bundled/*/*.jsonl", "bundled/*/*.md"]},
    install_requires=[
        # torch is deliberately unpinned: scripts/setup.sh installs the right build first.
        "torch>=2.4",
        "lightning>=2.2",
        "omegaconf>=2.3",
        "hydra-core>=1.3",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "gguf>=0.10",
        "jinja2>=3.1.6",  # chat templates (data/chat_template.py); older releases have sandbox escapes
        "numpy",
    ],
    extras_require={
        "test": ["pytest>=7", "transformers>=4.45", "peft>=0.13", "accelerate", "torchao>=0.10", "import-linter>=2.0", "hypothesis>=6.0"],
        "quant": ["torchao>=0.10"],  # QLoRA's 4-bit NF4 base weights (nemo_peft.peft.qlora)
        "parquet": ["pyarrow"],  # Parquet data files (nemo_peft.data.record_files)
        "dev": ["pytest>=7", "transformers>=4.45", "peft>=0.13", "accelerate"],
    },
)
