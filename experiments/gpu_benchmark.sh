#!/usr/bin/env bash
# Issue 17's GPU run: the urban front-end recipe (camvid, crop 628, batch 8) and the VOC context stage (Large on the
# 66x66 scores of crop 900, the recipe's batch 60), float32 and bfloat16, beside PyTorch's same network
# (channels-last, cuDNN with benchmark mode, autocast for bfloat16) in the same process; per-layer tables, the rest
# of the step, the bfloat16 peak. Writes docs/results/benchmark_gpu.md and .json (OUT= elsewhere).
#
#   bash experiments/gpu_benchmark.sh --download   # here, with a package index: the wheels the GPU image lacks
#   bash experiments/gpu_benchmark.sh              # there: installs them (no network), then runs (~10 min)
#   SMOKE=1 bash experiments/gpu_benchmark.sh      # on a CPU: every code path at a 16th of the channels, 1 run
#
# The GPU image this was written for has Python 3.12 with jax 0.11 (CUDA plugins), torch, flax, optax and orbax;
# of this project's imports only ml-collections is missing there, which --download puts in $WHEELS (default
# wheels/, git-ignored: carry it along). PYTHON (python3), OUT (docs/results/benchmark_gpu), RUNS (10).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
NEEDED=ml-collections
if [ "${1:-}" = "--download" ]; then
  $PY -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" $NEEDED
  ls "$WHEELS"
  exit
fi
if ! $PY -c 'import ml_collections' 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links="$WHEELS" $NEEDED
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the project from this tree, no install (no build backend)
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU's memory
if [ -n "${SMOKE:-}" ]; then
  OUT=${OUT:-runs/gpu_benchmark_smoke/benchmark}
  ARGS="--width=0.0625 --crop=404,404 --batch=1 --context_crop=404,404 --context_batch=1"
  RUNS=${RUNS:-1}
else
  OUT=${OUT:-docs/results/benchmark_gpu}
  ARGS="--crop=628,628 --batch=8 --context_crop=900,900 --context_batch=60"
  RUNS=${RUNS:-10}
  $PY -c 'import jax, sys; sys.exit(0 if jax.default_backend() == "gpu" else "error: JAX sees no GPU (SMOKE=1 on a CPU)")'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
mkdir -p "$(dirname "$OUT")"
start=$(date +%s)
$PY -m dilated_jax.benchmark --layers --preset=camvid --stage=frontend --context_preset=pascal_voc $ARGS \
    --dtypes=float32,bfloat16 --runs="$RUNS" --output="$OUT.json" --markdown="$OUT.md"
echo "gpu_benchmark done in $(( $(date +%s) - start )) s: $OUT.md"
