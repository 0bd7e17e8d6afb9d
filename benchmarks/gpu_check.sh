#!/usr/bin/env bash
# GPU check for a CUDA machine (not run in CI): short bf16 LoRA fine-tunes of the default model
# (the embedded SmolLM2-135M GGUF) that show the GPU path works and what it costs.
#
#   1. one GPU               trainer=gpu trainer.devices=1
#   2. all GPUs, DDP         trainer.strategy=ddp  (NCCL; only adapter gradients are all-reduced)
#   3. all GPUs, FSDP2       trainer.strategy=fsdp (the frozen base is sharded too)
# With one GPU visible, runs 2 and 3 use that one GPU (one process each), with a note.
#
# Each run writes into its own output dir under $OUT (overwrite=true) and its log beside it
# ($OUT/<run>.log). Each run ends with the ThroughputMonitor table (tokens/s and peak CUDA memory per
# rank, and the total); the summary at the end collects those tables and the GPUs' names and memory.
# Every rank gets data.train_ds.micro_batch_size samples per step (model.global_batch_size is left
# null), so the global batch grows with the GPUs and the total tokens/s compare across runs.
#
# Usage: bash benchmarks/gpu_check.sh [extra Hydra overrides for every run]
#   STEPS=30 OUT=results/gpu_check PYTHON=python CUDA_VISIBLE_DEVICES=0,1 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
OUT=${OUT:-results/gpu_check}
STEPS=${STEPS:-30}
EXTRA=("$@")

if ! "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    version=$("$PY" -c 'import torch; print(f"{torch.__version__}, CUDA build {torch.version.cuda}")' 2>/dev/null \
              || echo "not importable")
    echo "gpu_check.sh: no CUDA GPU is usable here (torch $version). Run it on a machine with an NVIDIA GPU" \
         "and a CUDA build of torch; scripts/setup.sh keeps a CUDA torch that is already installed." >&2
    exit 1
fi
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
echo "gpu_check: $NGPU GPU(s) visible, $STEPS steps per run, output under $OUT"
mkdir -p "$OUT"

COMMON=(trainer=gpu trainer.precision=bf16-mixed "trainer.max_steps=$STEPS" eval_before=false
        model.eval_exact_match=false trainer.enable_progress_bar=false exp_manager.overwrite=true)
RUNS=()
STATUS=()
NOTES=()

run() {  # run NAME OVERRIDES...: one fine-tune, logged to $OUT/NAME.log; a failure is recorded, not fatal
    local name=$1
    shift
    local cmd=("$PY" examples/finetune.py "${COMMON[@]}" "exp_manager.output_dir=$OUT/$name" "$@"
               ${EXTRA[@]+"${EXTRA[@]}"})
    echo
    echo "=== $name: ${cmd[*]}"
    RUNS+=("$name")
    if "${cmd[@]}" 2>&1 | tee "$OUT/$name.log"; then
        STATUS+=("ok")
    else
        STATUS+=("FAILED (exit ${PIPESTATUS[0]})")
    fi
}

run 1gpu trainer.devices=1
# With one GPU the strategies still run (world size 1): their code paths are checked, not their scaling.
run "${NGPU}gpu_ddp" "trainer.devices=$NGPU" trainer.strategy=ddp
run "${NGPU}gpu_fsdp" "trainer.devices=$NGPU" trainer.strategy=fsdp
if [ "$NGPU" -eq 1 ]; then
    NOTES+=("only 1 GPU visible: DDP and FSDP ran as one process each (code path, not scaling)")
fi

{
    echo
    echo "==================== gpu_check summary ===================="
    nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "(nvidia-smi not available)"
    "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
    for i in "${!RUNS[@]}"; do
        name=${RUNS[$i]}
        echo
        echo "--- $name: ${STATUS[$i]} (log: $OUT/$name.log)"
        grep -E 'global batch|all-reduced' "$OUT/$name.log" || true
        grep -F '[throughput]' "$OUT/$name.log" || echo "(no ThroughputMonitor table in the log)"
        if [ "${STATUS[$i]}" != ok ]; then
            echo "last lines of the log:"
            tail -n 5 "$OUT/$name.log"
        fi
    done
    for note in ${NOTES[@]+"${NOTES[@]}"}; do
        echo
        echo "note: $note"
    done
} | tee "$OUT/summary.txt"

for s in "${STATUS[@]}"; do
    [ "$s" = ok ] || exit 1
done
