#!/usr/bin/env bash
# Two processes fine-tune the tiny random model (model=tiny: no files needed) on this machine's CPUs,
# with Lightning DDP over gloo (trainer=ddp: accelerator cpu, strategy ddp, devices 2).
#
# What it shows:
#   - two ranks: Lightning starts a second copy of examples/finetune.py; each rank trains on its own
#     half of every global batch, and only the adapter gradients are all-reduced between them;
#   - one adapter: global rank 0 owns the output directory (lock, checkpoints, <OUT>/adapter), so
#     "adapter saved to ..." is printed once;
#   - the batch arithmetic: global_batch_size = micro_batch_size x devices x num_nodes x
#     accumulate_grad_batches. Try `bash examples/launch_ddp_cpu.sh model.global_batch_size=16
#     data.train_ds.micro_batch_size=4` (16 = 4 x 2 ranks x 2 accumulated micro-batches);
#   - the ThroughputMonitor table at the end: tokens/s and peak memory per rank, and their total.
#
# Usage (from anywhere): bash examples/launch_ddp_cpu.sh [more Hydra overrides]
#   STEPS=50 OUT=results/my_ddp bash examples/launch_ddp_cpu.sh trainer.num_threads=2
#
# The same run under torchrun (Lightning detects torchrun's environment and does not spawn itself):
#   torchrun --nproc_per_node=2 examples/finetune.py model=tiny trainer=ddp trainer.devices=2 \
#       trainer.max_steps=20 exp_manager.output_dir=results/ddp_cpu exp_manager.overwrite=true
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python examples/finetune.py model=tiny trainer=ddp trainer.devices=2 \
    trainer.max_steps="${STEPS:-20}" exp_manager.output_dir="${OUT:-results/ddp_cpu}" exp_manager.overwrite=true "$@"
