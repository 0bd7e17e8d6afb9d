import os

from setuptools import find_packages, setup

# The Hydra configs: the top-level conf/ is their single source; it ships inside the package as
# nemo_peft/conf (package_dir), so `nemo-peft` finds them in a wheel install as in a checkout.
CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf")
CONF_GROUPS = sorted(d for d in os.listdir(CONF) if os.path.isdir(os.path.join(CONF, d)) and d.isidentifier())

setup(
    name="nemo_peft",
    version="0.1.0",
    description="Parameter-efficient fine-tuning (LoRA and friends) for GPT- and T5-style models, NeMo style.",
    python_requires=">=3.10",
    packages=[*find_packages(include=["nemo_peft", "nemo_peft.*"]), "nemo_peft.conf",
              *(f"nemo_peft.conf.{group}" for group in CONF_GROUPS)],
    package_dir={"nemo_peft.conf": "conf"},
    package_data={"nemo_peft.data": ["bundled/*/*.jsonl", "bundled/*/*.md", "bundled/*/*.json",
                                      "bundled/*/*.safetensors"],  # t5_dates: the small pre-trained T5
                  "nemo_peft.conf": ["*.yaml"], **{f"nemo_peft.conf.{group}": ["*.yaml"] for group in CONF_GROUPS}},
    entry_points={"console_scripts": ["nemo-peft = nemo_peft.cli:console"]},
    install_requires=[
        # torch is deliberately unpinned: scripts/setup.sh installs the right build first.
        "torch>=2.4",
        "lightning>=2.2",
        "omegaconf>=2.3",
        "pyyaml>=5.1",  # nemo-peft --help reads the configs' option lists without Hydra (cli/config_groups.py)
        "hydra-core>=1.3",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "gguf>=0.10",
        "jinja2>=3.1.6",  # chat templates (data/chat_template.py); older releases have sandbox escapes
        "numpy",
    ],
    extras_require={
        "test": ["pytest>=7", "transformers>=4.45", "peft>=0.13", "accelerate", "torchao>=0.10", "import-linter>=2.0", "hypothesis>=6.0",
                 "tensorboard", "matplotlib", "nbclient", "nbformat", "ipykernel"],  # the last three run tutorials/
        "quant": ["torchao>=0.10"],  # QLoRA's 4-bit NF4 base weights (nemo_peft.peft.qlora)
        "parquet": ["pyarrow"],  # Parquet data files (nemo_peft.data.record_files)
        "tensorboard": ["tensorboard"],  # exp_manager.create_tensorboard_logger
        "wandb": ["wandb"],  # exp_manager.create_wandb_logger
        "mlflow": ["mlflow"],  # exp_manager.create_mlflow_logger
        "plots": ["matplotlib"],  # <output_dir>/loss.png, examples/plot_metrics.py
        "tutorials": ["jupyterlab", "matplotlib", "transformers>=4.45", "peft>=0.13"],  # tutorials/*.ipynb
        "dev": ["pytest>=7", "transformers>=4.45", "peft>=0.13", "accelerate"],
    },
)
