#!/usr/bin/env bash
# The full paper presets of the learners that have never run their papers' schedules, one after
# another on one CUDA GPU, each under its own share of a time budget, then each evaluated on its
# preset's test protocol (600 tasks, Vinyals test split):
#   reptile-omniglot-5w1s-transductive, mann-omniglot-5way, snail-omniglot-5w1s,
#   metanet-omniglot-5w1s, and maml-omniglot-20w1s if a share of the budget remains.
#
#   bash benchmarks/gpu_fidelity.sh DATA_DIR [BUDGET_S=720] [RESULTS_DIR=gpu-fidelity-results]
#
# DATA_DIR holds omniglot/images_background.zip and images_evaluation.zip. Each run gets
# BUDGET_S/4 seconds (start-up, data and compilation included); at its end SIGTERM makes it save
# a checkpoint at an iteration boundary, which is then evaluated, so a run cut short is reported
# with the share of its schedule it ran. RESULTS_DIR receives fidelity.json (one row per preset:
# iterations run of the preset's, training seconds, wall seconds, test results) and each run's
# small files (config.json, report.json, metrics.jsonl, PNGs), never the checkpoints.
# Rehearse on CPU with a tiny budget before spending GPU time:
#   DEVICE=cpu COMPILE=off EPISODES=20 bash benchmarks/gpu_fidelity.sh DATA 120 /tmp/fidelity
# Uses the checkout's src/ through PYTHONPATH (like gpu_check.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
DATA="${1:?usage: gpu_fidelity.sh DATA_DIR [BUDGET_S] [RESULTS_DIR]}"
BUDGET="${2:-720}"
RESULTS="${3:-gpu-fidelity-results}"
DEVICE="${DEVICE:-cuda}"
COMPILE="${COMPILE:-reduce-overhead}"
EPISODES="${EPISODES:-600}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
mkdir -p "$RESULTS/runs"
START=$(date +%s)
SHARE=$((BUDGET / 4))

if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_fidelity: no CUDA device')" || exit 2
fi
"$PY" -m metagrad --help > /dev/null || { echo "gpu_fidelity: metagrad does not import"; exit 2; }

run_one() {  # PRESET: train for at most SHARE seconds, then evaluate the checkpoint
    local preset=$1 run="$RESULTS/runs/$1" t0 status
    echo "== $preset (at most $SHARE s of training)"
    t0=$(date +%s)
    timeout -s TERM "$SHARE" "$PY" -m metagrad train --preset "$preset" --data-dir "$DATA" --out "$run" --quiet \
        --set train.device="$DEVICE" --set train.compile="$COMPILE" > "$RESULTS/runs/$preset.train.txt" 2>&1
    status=$?
    echo "$(( $(date +%s) - t0 ))" > "$RESULTS/runs/$preset.wall_s"
    tail -n 3 "$RESULTS/runs/$preset.train.txt"
    if [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -ne 130 ]; then
        echo "   training failed (exit status $status)"; return
    fi
    "$PY" -m metagrad eval "$run" --episodes "$EPISODES" --json --set train.device="$DEVICE" \
        > "$RESULTS/runs/$preset.eval.json" 2> "$RESULTS/runs/$preset.eval.txt" || echo "   evaluation failed"
}

for preset in reptile-omniglot-5w1s-transductive mann-omniglot-5way snail-omniglot-5w1s metanet-omniglot-5w1s; do
    run_one "$preset"
done
if [ $(( START + BUDGET - $(date +%s) )) -ge "$SHARE" ]; then
    run_one maml-omniglot-20w1s
fi

"$PY" - "$RESULTS" <<'PYEOF'
"""Collect fidelity.json; keep the runs' small files, drop their checkpoints."""
import json, sys
from pathlib import Path

import torch

results = Path(sys.argv[1])
rows = []
for wall in sorted((results / "runs").glob("*.wall_s")):
    preset = wall.name[: -len(".wall_s")]
    run, row = results / "runs" / preset, {"preset": preset, "wall_s": int(wall.read_text())}
    ckpt = run / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        planned = state["config"]["train"]["iterations"]
        row.update(iterations=state["iteration"], of_iterations=planned, share=state["iteration"] / planned,
                   train_s=round(state["train_seconds"], 1))
        ckpt.unlink()
    evaluation = results / "runs" / f"{preset}.eval.json"
    if evaluation.is_file() and evaluation.read_text().strip():
        e = json.loads(evaluation.read_text())
        row.update(headline=e["headline"], metric=e["metric"], mean=e["mean"], ci95=e["ci95"], episodes=e["episodes"],
                   results={r["setting"]: [r["mean"], r["ci95"]] for r in e["results"]})
    else:
        row["error"] = "no evaluation (see runs/%s.train.txt and .eval.txt)" % preset
    for big in run.glob("tb"):
        for f in big.iterdir():
            f.unlink()
        big.rmdir()
    rows.append(row)
    done = f"{row['iterations']}/{row['of_iterations']} iterations" if "iterations" in row else "no checkpoint"
    score = f"{row['metric']} {row['mean']:.4f} ± {row['ci95']:.4f}" if "mean" in row else row["error"]
    print(f"{preset}: {done}, {row['wall_s']} s: {score}")
(results / "fidelity.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
print(f"wrote {results / 'fidelity.json'}")
PYEOF
echo "== gpu_fidelity done in $(( $(date +%s) - START )) s; results in $RESULTS"
