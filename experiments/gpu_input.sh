#!/usr/bin/env bash
# Issue 12's GPU check: the camvid front-end recipe (crop 628, batch 8, bfloat16) trained for STEPS steps on the
# real CamVid with the real input pipeline; prints images/s, the share of time the loop waited for input, and the
# GPU's utilisation (nvidia-smi, sampled every second), and writes them to $W/gpu_input.json.
# Usage: bash experiments/gpu_input.sh [WORKDIR]
#   CAMVID: SegNet's CamVid folder (default ../shared/datasets/camvid); DATA: where it is prepared (default data);
#   STEPS (300); WORKERS (-1: one per core); WHEELS: a folder of wheels to install first on a machine without network;
#   EXTRA: more config overrides (e.g. a narrow network to try the script on a CPU).
set -euo pipefail
W=${1:-runs/gpu_input}
PY=${PYTHON:-python3}
CAMVID=${CAMVID:-../shared/datasets/camvid}
DATA=${DATA:-data}
STEPS=${STEPS:-300}
WORKERS=${WORKERS:--1}
if [ -n "${WHEELS:-}" ]; then $PY -m pip install -q --no-index --find-links="$WHEELS" -r requirements.txt || \
  $PY -m pip install -q --no-index --find-links="$WHEELS" grain cloudpickle portpicker ml-collections tensorboardX \
    tensorflow-datasets array-record importlib-resources; $PY -m pip install -q --no-deps -e .; fi
if [ ! -d "$CAMVID" ]; then echo "error: CAMVID=$CAMVID is not a folder (SegNet's CamVid release)" >&2; exit 2; fi
$PY -m dilated_jax.data.prepare --dataset=camvid --manual_dir="$CAMVID" --data_dir="$DATA"
mkdir -p "$W"
rm -rf "$W/run"  # a fresh run: resuming would skip the steps to be timed
SMI=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 > "$W/nvidia_smi.csv" &
  SMI=$!
fi
$PY -m dilated_jax.train --config=experiments/camvid_dilation8.py:stage=frontend --config.data.dir="$DATA" \
    --config.model.dtype=bfloat16 --config.total_steps="$STEPS" --config.log_every=20 \
    --config.checkpoint_every="$STEPS" --config.data.workers="$WORKERS" ${EXTRA:-} --workdir="$W/run"
[ -n "$SMI" ] && kill "$SMI"
$PY - "$W" <<'PY'
import json, os, sys
import numpy as np
w = sys.argv[1]
lines = [json.loads(l) for l in open(os.path.join(w, 'run', 'metrics.jsonl'))]
train = [l for l in lines if l['kind'] == 'train'][1:]  # the first interval holds the compilation
out = {'images_per_s': float(np.median([l['images_per_sec'] for l in train])),
       'input_wait': float(np.median([l['input_wait'] for l in train]))}
smi = os.path.join(w, 'nvidia_smi.csv')
if os.path.exists(smi):
  util = [float(r.split(',')[0]) for r in open(smi) if r.strip()]
  busy = [u for u in util if u > 0]  # the samples of the training loop, not of start-up and evaluation
  out.update(gpu_utilisation_mean=float(np.mean(util)), gpu_utilisation_while_busy=float(np.median(busy or [0])))
json.dump(out, open(os.path.join(w, 'gpu_input.json'), 'w'), indent=1)
print(json.dumps(out))
PY
