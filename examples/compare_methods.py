"""Fine-tune the default task with each PEFT method; print a table of trainable
parameters, held-out exact match before/after and minutes.

    python examples/compare_methods.py                       # every method, default settings
    python examples/compare_methods.py --methods lora,ia3 -- trainer.max_steps=50
Anything after ``--`` is passed to every run as Hydra overrides.
"""
import argparse
import os
import sys
import time

from hydra import compose, initialize_config_dir

from nemo_peft.recipes.hydra_args import peft_scheme_args, register_resolvers
from nemo_peft.recipes.finetune import run_finetune

METHODS = ["lora", "dora", "qlora", "ia3", "adapter", "ptuning", "prompt_tuning", "prefix_tuning",
           "ptuning+adapter", "lora+ia3"]  # '+' joins schemes trained together
# Per-method learning rates: vector/prompt methods need larger steps than LoRA.
LR = {"ia3": 2e-2, "ptuning": 1e-3, "prompt_tuning": 3e-2, "prefix_tuning": 1e-2}


def main():
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma list of schemes; join combined schemes with '+' (e.g. ptuning+adapter)")
    parser.add_argument("--output", default="results/compare_methods.md")
    args = parser.parse_args(argv)
    register_resolvers()
    conf_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conf")
    header = ["| method | trainable params | exact match before | exact match after | minutes |",
              "|---|---|---|---|---|"]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write("\n".join(header) + "\n")
    for scheme in [m.replace("+", ",") for m in args.methods.split(",")]:
        first = scheme.split(",")[0]
        overrides = [f"model.peft.peft_scheme='{scheme}'", f"name=compare_{scheme.replace(',', '_')}",
                     "trainer.enable_progress_bar=false", "exp_manager.checkpoint=null",
                     "exp_manager.overwrite=true"]  # a comparison run replaces its previous row
        if first in LR:
            overrides.append(f"model.optim.lr={LR[first]}")
        with initialize_config_dir(config_dir=os.path.abspath(conf_dir), version_base="1.3"):
            cfg = compose("finetune", overrides=peft_scheme_args(overrides + extra))
        start = time.time()
        result = run_finetune(cfg)
        row = (f"| {scheme} | {result['module'].model.num_trainable_parameters():,} | "
               f"{result['exact_match_before']:.0f}% | {result['exact_match_after']:.0f}% | "
               f"{(time.time() - start) / 60:.1f} |")
        print(row)
        with open(args.output, "a") as f:  # row by row, so an interrupted run keeps what it measured
            f.write(row + "\n")
    print(open(args.output).read())


if __name__ == "__main__":
    main()
