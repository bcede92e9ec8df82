#!/usr/bin/env bash
# The full paper presets of the learners that have never run their papers' schedules, one after
# another on one CUDA GPU, each under its own share of a time budget, then each evaluated on its
# preset's test protocol (Vinyals test split):
#   reptile-omniglot-5w1s-transductive, mann-omniglot-5way, snail-omniglot-5w1s,
#   metanet-omniglot-5w1s, and maml-omniglot-20w1s if a share of the budget remains.
#
#   bash benchmarks/gpu_fidelity.sh DATA_DIR [BUDGET_S=720] [RESULTS_DIR=gpu-fidelity-results]
#
# DATA_DIR holds omniglot/images_background.zip and images_evaluation.zip (and, to save the
# decoding, their preprocessed *.cache files). Every preset's images of all three splits are
# decoded into the cache first, within the budget, so no evaluation spends its EVAL_S on that
# (a rehearsal of the 56 px one-shot preset did). Each preset gets an equal share of what is left of
# BUDGET_S when it starts (start-up, compilation and evaluation included): training stops
# by SIGTERM EVAL_S seconds before the share ends and saves a checkpoint at an iteration
# boundary, which is then evaluated under a timeout of EVAL_S, so a run cut short is reported
# with the share of its schedule it ran. After EVERY preset, RESULTS_DIR/fidelity.json is
# rewritten (one row per finished preset: iterations run of the preset's, training seconds, wall
# seconds, test results) and the run's small files (config.json, report.json, metrics.jsonl,
# PNGs, logs; never the checkpoint or TensorBoard files) go into RESULTS_DIR/<preset>.tar.gz, so
# a command killed part-way still leaves the rows it finished, in a flat folder.
# Settings (environment): DEVICE=cuda, COMPILE=off (a compiled run's first minutes are
# compilation: measured on an H200, compilation alone outlasted a 95-s share), EPISODES=600,
# EVAL_S=60, PRESETS="..." to run other presets, EXTRA="" to skip MAML 20w1s.
# Omniglot's original one-shot challenge at its GPU size (64 px, 20,000 episodes), alone:
#   PRESETS=oneshot-omniglot-lake-64 EXTRA= bash benchmarks/gpu_fidelity.sh DATA 600 RESULTS
# Rehearse on CPU with a tiny budget before spending GPU time:
#   DEVICE=cpu EPISODES=20 EVAL_S=20 bash benchmarks/gpu_fidelity.sh DATA 200 /tmp/fidelity
# Uses the checkout's src/ through PYTHONPATH (like gpu_check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA="${1:?usage: gpu_fidelity.sh DATA_DIR [BUDGET_S] [RESULTS_DIR]}"
BUDGET="${2:-720}"
RESULTS="${3:-gpu-fidelity-results}"
DEVICE="${DEVICE:-cuda}"
COMPILE="${COMPILE:-off}"
EPISODES="${EPISODES:-600}"
EVAL_S="${EVAL_S:-60}"
PRESETS="${PRESETS:-reptile-omniglot-5w1s-transductive mann-omniglot-5way snail-omniglot-5w1s metanet-omniglot-5w1s}"
EXTRA="${EXTRA-maml-omniglot-20w1s}"  # run when a quarter of the budget is still left ("" for none)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
mkdir -p "$RESULTS"
WORK=$(mktemp -d)  # the runs themselves (checkpoints included) stay out of RESULTS
START=$(date +%s)

if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_fidelity: no CUDA device')" || exit 2
fi
"$PY" -m metagrad --help > /dev/null || { echo "gpu_fidelity: metagrad does not import"; exit 2; }

# decode every preset's images into the cache first (outside the timed shares): an evaluation
# that had to build its test images' cache could run out of its EVAL_S
"$PY" - "$DATA" $PRESETS $EXTRA <<'PYEOF' || { echo "gpu_fidelity: preparing the data failed"; exit 2; }
import sys
from metagrad.build import build_task
from metagrad.config import load_config, with_data_dir
for preset in sys.argv[2:]:
    cfg = with_data_dir(load_config(preset), sys.argv[1])
    for split in ("train", "val", "test"):
        build_task(cfg, split)
    print(f"== {preset}: images cached")
PYEOF

run_one() {  # PRESET SHARE: train until EVAL_S before the share ends, evaluate, record
    local preset=$1 share=$2 run="$WORK/$1" t0 status
    echo "== $preset (a share of $share s: training at most $(( share - EVAL_S )) s, evaluation at most $EVAL_S s)"
    t0=$(date +%s)
    timeout -s TERM "$(( share - EVAL_S ))" "$PY" -m metagrad train --preset "$preset" --data-dir "$DATA" --out "$run" \
        --quiet --set train.device="$DEVICE" --set train.compile="$COMPILE" > "$WORK/$preset.train.txt" 2>&1
    status=$?
    tail -n 3 "$WORK/$preset.train.txt"
    if [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 130 ]; then
        echo "   training failed (exit status $status)"
    else
        timeout -s TERM "$EVAL_S" "$PY" -m metagrad eval "$run" --episodes "$EPISODES" --json --set train.device="$DEVICE" \
            > "$WORK/$preset.eval.json" 2> "$WORK/$preset.eval.txt" || echo "   evaluation failed or timed out"
    fi
    echo "$(( $(date +%s) - t0 ))" > "$WORK/$preset.wall_s"
    "$PY" benchmarks/fidelity_rows.py "$WORK" "$preset" "$RESULTS"
}

set -- $PRESETS
while [ $# -gt 0 ]; do
    left=$(( START + BUDGET - $(date +%s) ))
    share=$(( left / $# ))
    if [ "$share" -le $(( EVAL_S + 30 )) ]; then
        echo "== $1 and the $(( $# - 1 )) after it skipped: ${left} s left of the budget"
        break
    fi
    run_one "$1" "$share"
    shift
done
left=$(( START + BUDGET - $(date +%s) ))
if [ -n "$EXTRA" ] && [ "$left" -ge $(( BUDGET / 4 )) ]; then
    run_one "$EXTRA" "$left"
fi
rm -rf "$WORK"
echo "== gpu_fidelity done in $(( $(date +%s) - START )) s; results in $RESULTS"
