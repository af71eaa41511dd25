#!/usr/bin/env bash
# The built-in dataset end to end: front end, context module on its cached scores, test-set evaluation of both,
# predictions drawn for four test scenes. Usage: bash experiments/quickstart.sh [WORKDIR]   (run by `make quickstart`)
set -euo pipefail
W=${1:-runs/quickstart}
PY=${PYTHON:-.venv/bin/python}
CFG=experiments/synthetic.py
start=$(date +%s)
$PY -m dilated_jax.train --config=$CFG:stage=frontend --workdir="$W/frontend"
$PY -m dilated_jax.train --config=$CFG:stage=context --config.init_from="$W/frontend" --workdir="$W/context"
echo "== test set: front end alone"
$PY -m dilated_jax.evaluate --config=$CFG:stage=frontend --workdir="$W/frontend" --split=test
echo "== test set: front end + context module (Basic)"
$PY -m dilated_jax.evaluate --config=$CFG:stage=context --workdir="$W/context" --split=test
$PY -m dilated_jax.data.synthetic --output_dir="$W/scenes" --split=test --count=4
$PY -m dilated_jax.predict --config=$CFG:stage=context --workdir="$W/context" --output_dir="$W/predictions" \
    "$W"/scenes/test_000[0-3].png
echo "quickstart done in $(( $(date +%s) - start )) s: results in $W/*/eval, pictures in $W/predictions"
