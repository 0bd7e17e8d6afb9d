"""``nemo-peft --help`` and ``nemo-peft COMMAND --help``: the commands, the config groups with their
options (read from the YAML files) and the overrides people use most, with their current defaults."""
from __future__ import annotations

from nemo_peft.cli.config_groups import GROUPS, config_value, defaults_of, options

# command -> (one line, Hydra config or None for an argparse command)
COMMANDS = {
    "finetune": ("fine-tune a model with PEFT (LoRA on the embedded SmolLM2-135M-Instruct by default)", "finetune"),
    "estimate": ("pre-flight estimate of a finetune run: parameters, adapter size, peak memory, time", "finetune"),
    "generate": ("generate answers for a JSONL file with a base model and an adapter", "generate"),
    "inspect-data": ("show examples as the model sees them (trained tokens marked) and a summary per split",
                     "inspect_data"),
    "merge": ("merge an adapter into its base model; write a Hugging Face or native checkpoint", None),
    "export": ("convert adapters to and from Hugging Face PEFT; recover an adapter from a checkpoint", None),
}

# command -> [(override, what it does)]; the value shown is the config's default
OVERRIDES = {
    "finetune": [
        ("trainer.max_steps", "optimizer steps"),
        ("model.peft.peft_scheme", "PEFT method(s); a comma list combines them (ptuning,adapter)"),
        ("model.peft.lora_tuning.dim", "LoRA rank (alpha: model.peft.lora_tuning.alpha)"),
        ("model.peft.lora_tuning.target_modules", "LoRA targets: linear_qkv, q_proj, v_proj, all, wildcards"),
        ("model.optim.lr", "learning rate"),
        ("model.restore_from_path", "base model: a .gguf file, a Hugging Face or nemo_peft directory (null: embedded)"),
        ("data.train_ds.file_names", "training JSONL/JSON/Parquet files (also validation_ds, test_ds)"),
        ("data.train_ds.micro_batch_size", "samples per micro-batch"),
        ("data.train_ds.max_seq_length", "tokens per example"),
        ("model.global_batch_size", "samples per optimizer step (derives the accumulation)"),
        ("trainer.precision", "32-true | bf16-mixed"),
        ("model.activations_checkpoint_granularity", "full: recompute layers in backward, far less memory"),
        ("exp_manager.output_dir", "where the adapter, checkpoints and logs go"),
        ("exp_manager.resume_if_exists", "continue from <output_dir>/checkpoints/last.ckpt"),
        ("exp_manager.overwrite", "replace a previous run in output_dir"),
        ("+estimate_only", "print the pre-flight estimate, train nothing"),
    ],
    "generate": [
        ("adapter_path", "adapter directory written by finetune (null: the base model)"),
        ("data.predict_ds.file_names", "JSONL prompts to answer"),
        ("output_file", "where the predictions go (JSONL)"),
        ("model.restore_from_path", "base model (null: the embedded SmolLM2-135M-Instruct)"),
        ("model.generation.max_new_tokens", "tokens generated per prompt"),
        ("model.generation.greedy", "false: sample (temperature, top_k, top_p)"),
    ],
    "inspect-data": [
        ("split", "train | validation | test | predict"),
        ("num_examples", "examples printed"),
        ("data.train_ds.file_names", "your own data files"),
        ("data.train_ds.max_seq_length", "tokens per example"),
    ],
}
OVERRIDES["estimate"] = [o for o in OVERRIDES["finetune"] if o[0] != "+estimate_only"]

EXAMPLES = {
    "finetune": ["nemo-peft finetune", "nemo-peft finetune model=tiny trainer.max_steps=20 exp_manager.output_dir=/tmp/run",
                 "nemo-peft finetune model.peft.peft_scheme=ia3 model.optim.lr=2e-2",
                 "nemo-peft finetune +estimate_only=true model.peft.peft_scheme=qlora"],
    "estimate": ["nemo-peft estimate", "nemo-peft estimate model.activations_checkpoint_granularity=full"],
    "generate": ["nemo-peft generate adapter_path=results/finetune/adapter 'data.predict_ds.file_names=[my.jsonl]'"],
    "inspect-data": ["nemo-peft inspect-data data=chat_dates num_examples=2"],
}


def _groups(config: str) -> list[str]:
    chosen = defaults_of(config)
    lines = []
    for group in GROUPS:
        if group not in chosen:
            continue
        opts = options(group)
        how = "model.peft.peft_scheme=NAME[,NAME]" if group == "peft" else f"{group}=NAME"
        lines.append(f"  {group} ({how}): " + " | ".join(f"{o}*" if o == chosen[group] else o for o in opts))
        lines += [f"      {name:<18} {text}" for name, text in opts.items() if text]
    return lines


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def command_help(command: str) -> str:
    text, config = COMMANDS[command]
    lines = [f"usage: nemo-peft {command} [KEY=VALUE ...]", "", f"{text[0].upper()}{text[1:]}.",
             f"Hydra config: conf/{config}.yaml; the same overrides as python examples/{config}.py.", ""]
    if _groups(config):
        lines += ["config groups (* = default):", *_groups(config), ""]
    lines.append("most used overrides (default value):")
    for key, what in OVERRIDES[command]:
        value = "true" if key.startswith("+") else _shown(config_value(config, key))
        shown = f"  {key}={value}"
        lines += [shown.ljust(50) + f" {what}"] if len(shown) < 50 else [shown, " " * 50 + f" {what}"]
    lines += ["", "Any other key of the config works the same way (KEY=VALUE; +KEY=VALUE adds a key).",
              "Hydra's own flags: --cfg job prints the composed config, --hydra-help lists the others.",
              "", "examples:", *[f"  {e}" for e in EXAMPLES[command]]]
    if command == "estimate":
        lines[2:3] = [f"{text[0].upper()}{text[1:]}, from a few probe steps (same as nemo-peft finetune ... "
                      "+estimate_only=true); nothing is trained or written."]
    return "\n".join(lines)


def main_help() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: nemo-peft COMMAND [ARGS ...]", "",
             "Parameter-efficient fine-tuning (LoRA and friends) for GPT- and T5-style models, NeMo style.", "",
             "commands:", *[f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()], "",
             "finetune, estimate, generate and inspect-data take Hydra overrides (KEY=VALUE); config groups "
             "(* = default):", *_groups("finetune"), "",
             "nemo-peft COMMAND --help shows a command's options and most used overrides.", "",
             "examples:", "  nemo-peft finetune trainer.max_steps=300 model.peft.lora_tuning.dim=8",
             "  nemo-peft finetune model=tiny trainer.max_steps=5 exp_manager.output_dir=/tmp/tiny",
             "  nemo-peft generate adapter_path=results/finetune/adapter",
             "  nemo-peft merge --adapter results/finetune/adapter --output merged_model"]
    return "\n".join(lines)
