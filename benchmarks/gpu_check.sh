#!/usr/bin/env bash
# GPU check (one CUDA GPU, < 5 minutes, no internet, no install needed):
#   1. versions of Python, torch, CUDA, cuDNN and the GPU;
#   2. the gradient-equality tests on CUDA: tests/test_maml_math.py, tests/test_scale.py (chunks,
#      recomputed inner loop, torch.compile with inductor, auto executor) and the distributed
#      equality test (which needs two GPUs for nccl, and says so when skipped);
#   3. `metagrad bench` on CUDA: MAML on Omniglot 5-way 1-shot and sinusoid, both executors,
#      task chunks, then torch.compile (default and reduce-overhead);
#   4. `metagrad train` end to end on CUDA with train.compile=reduce-overhead (if matplotlib and
#      tensorboard are installed).
# Run from anywhere:  bash benchmarks/gpu_check.sh [RESULTS_DIR]   (default: ./gpu-check-results)
# It uses the checkout's src/ through PYTHONPATH, so `pip install -e .` is not needed; it needs
# torch with CUDA, numpy, pillow, tqdm and pytest (not pytest-xdist: its tests run in one process,
# one GPU). Any failure stops it with a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-gpu-check-results}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

echo "== versions"
"$PY" - <<'EOF'
import importlib, platform, sys
import torch
print(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}  cudnn {torch.backends.cudnn.version()}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA GPU")
print(f"gpu {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
missing = [m for m in ("numpy", "PIL", "tqdm", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)}")
import metagrad
print(f"metagrad from {metagrad.__file__}")
EOF

echo "== gradient-equality tests on CUDA"
METAGRAD_TEST_DEVICE=cuda METAGRAD_TEST_COMPILE_BACKEND=inductor "$PY" -m pytest -q -p no:cacheprovider -o addopts="-ra" \
    tests/test_maml_math.py tests/test_scale.py \
    "tests/test_distributed.py::test_two_ranks_take_the_step_of_one_process_with_the_whole_meta_batch" \
    2>&1 | tee "$RESULTS/tests.txt"

echo "== benchmark (eager)"
"$PY" -m metagrad bench --device cuda --groups omniglot,sine,chunk --iters 10 --warmup 2 --timeout 120 \
    --results "$RESULTS/bench-eager.json" 2>&1 | tee "$RESULTS/bench-eager.txt"

echo "== benchmark (torch.compile)"
"$PY" -m metagrad bench --device cuda --groups compile --iters 20 --warmup 3 --timeout 240 \
    --results "$RESULTS/bench-compile.json" 2>&1 | tee "$RESULTS/bench-compile.txt"
echo "== meta-training end to end on CUDA (sine-quick, 600 iterations, compile=reduce-overhead)"
if "$PY" -c "import matplotlib, tensorboard" 2>/dev/null; then
    rm -rf "$RESULTS/sine-run"
    "$PY" -m metagrad train --preset sine-quick --out "$RESULTS/sine-run" --quiet --set train.device=cuda \
        --set train.iterations=600 --set train.compile=reduce-overhead --set train.eval_every=300 \
        --set train.checkpoint_every=300 --set train.test_tasks=100 2>&1 | tee "$RESULTS/train.txt"
else
    echo "skipped: matplotlib or tensorboard is not installed here (the training loop's logs and plots need them)"
fi
echo "== gpu_check passed; results in $RESULTS"
