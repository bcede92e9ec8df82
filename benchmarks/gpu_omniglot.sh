#!/usr/bin/env bash
# The MAML paper's Omniglot 5-way 1-shot run (preset maml-omniglot-5w1s: 60,000 iterations of
# meta-batch 32, second order) on one CUDA GPU, as much of it as fits in a time budget, then
# its test accuracy over 600 tasks (at each number of test-time inner steps) and its iterations
# per second. PRESET=NAME runs another preset the same way (e.g. fomaml-omniglot-5w1s).
#
#   [PRESET=NAME] bash benchmarks/gpu_omniglot.sh DATA_DIR [SECONDS=420] [RESULTS_DIR=gpu-omniglot-results]
#
# DATA_DIR holds omniglot/images_background.zip and omniglot/images_evaluation.zip (the cache of
# 28x28 tensors is written beside them). Training runs with train.compile=reduce-overhead; after
# SECONDS, SIGTERM makes it write a checkpoint and stop, and the checkpoint is evaluated. Like
# gpu_check.sh it uses the checkout's src/ through PYTHONPATH; it needs torch with CUDA, numpy,
# pillow, tqdm, matplotlib and tensorboard. DEVICE=cpu COMPILE=off try it without a GPU.
# Results of one H100: docs/results.md, benchmarks/results/gpu-h100-omniglot/.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA="${1:?usage: gpu_omniglot.sh DATA_DIR [SECONDS] [RESULTS_DIR]}"
SECONDS_BUDGET="${2:-420}"
RESULTS="${3:-gpu-omniglot-results}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
PRESET="${PRESET:-maml-omniglot-5w1s}"
RUN="$RESULTS/$PRESET"

echo "== training (at most $SECONDS_BUDGET s)"
timeout -s TERM "$SECONDS_BUDGET" "$PY" -m metagrad train --preset "$PRESET" --data-dir "$DATA" \
    --out "$RUN" --quiet --set train.device="${DEVICE:-cuda}" --set train.compile="${COMPILE:-reduce-overhead}" 2>&1 | tee "$RESULTS/train.txt"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 130 ]; then
    echo "gpu_omniglot: training failed (exit status $status)"; exit "$status"
fi

echo "== test accuracy of the last checkpoint (600 tasks) and training speed"
"$PY" -m metagrad eval "$RUN" --episodes 600 --json | tee "$RESULTS/eval.json" || exit
"$PY" - "$RUN" <<'EOF'
import sys, torch
state = torch.load(f"{sys.argv[1]}/checkpoint.pt", weights_only=True, map_location="cpu")
it, s = state["iteration"], state["train_seconds"]
print(f"{it} iterations in {s:.0f} s of training (compilation and validation included): {it / s:.1f} it/s")
EOF
"$PY" -m metagrad plot "$RUN"
echo "== gpu_omniglot done; results in $RESULTS"
