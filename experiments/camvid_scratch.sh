#!/usr/bin/env bash
# CamVid from scratch on a 2-core CPU (experiments/camvid_scratch.py): the front end, then at equal budget (the same
# steps, batch and learning rate) the front end alone trained on and front end + Basic context trained jointly, each
# evaluated on the 233 test images; Table 5 with our rows, and a picture of test predictions.
# Usage: bash experiments/camvid_scratch.sh [WORKDIR]   (CAMVID: SegNet's CamVid folder; S1, S2: steps of each part;
# CFG: the config, experiments/camvid_drn_scratch.py for a DRN-D-22 front end)
set -euo pipefail
W=${1:-runs/camvid_scratch}
PY=${PYTHON:-.venv/bin/python}
CAMVID=${CAMVID:-../shared/datasets/camvid}
DATA=${DATA:-data}
S1=${S1:-200}
S2=${S2:-50}
CFG=${CFG:-experiments/camvid_scratch.py}
start=$(date +%s)
if [ ! -d "$CAMVID" ]; then echo "error: CAMVID=$CAMVID is not a folder (SegNet's CamVid release)" >&2; exit 2; fi
$PY -m dilated_jax.data.prepare --dataset=camvid --manual_dir="$CAMVID" --data_dir="$DATA"
$PY -m dilated_jax.train --config=$CFG:stage=frontend --config.data.dir="$DATA" --config.total_steps=$S1 \
    --workdir="$W/frontend"
echo "front end: $(( $(date +%s) - start )) s"
for stage in frontend joint; do  # the same S2 steps from the same front end, on the same batches (seed 1)
  name=$([ $stage = frontend ] && echo frontend_more || echo joint)
  $PY -m dilated_jax.train --config=$CFG:stage=$stage --config.data.dir="$DATA" --config.init_from="$W/frontend" \
      --config.total_steps=$S2 --config.seed=1 --workdir="$W/$name"
  echo "$name: $(( $(date +%s) - start )) s"
done
$PY -m dilated_jax.tables "$W/frontend" "$W/frontend_more" "$W/joint" --output_dir="$W/tables" | tee "$W/table5.md"
$PY -m dilated_jax.figure --config=$CFG:stage=joint --config.data.dir="$DATA" --split=test --indices=0,60,120,180 \
    --workdirs="$W/frontend_more,$W/joint" --output="$W/test_predictions.png"
echo "camvid_scratch done in $(( $(date +%s) - start )) s"
