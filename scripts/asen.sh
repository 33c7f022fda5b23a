#!/usr/bin/env bash
# ASEN++ recipe (the published two stages): stage 1 (global branch), stage 2 (local + global) started from the last
# stage-1 checkpoint as in the published README; every training run ends with the test MAP of its best checkpoint.
#
#   scripts/asen.sh <FashionAI|DARN|DeepFashion> [asen_main.py options, e.g. --backbone-weights weights/]
#
# Environment: NGPU=N trains each stage under torchrun with N processes; SAVE_DIR (default runs) is the run
# root; PYTHON (default: .venv/bin/python if present, else python); DATA_CFG / STAGE_DIR replace the dataset
# config and the folder of s1.yaml/s2.yaml (the synthetic demo uses DATA_CFG=data/synthetic/asen/synthetic.yaml).
# A stage whose SAVE_DIR/NAME holds an earlier run is refused (one line); pass --overwrite to replace it, or
# continue a stopped stage with asen_main.py --resume SAVE_DIR/NAME.
set -euo pipefail
cd "$(dirname "$0")/.."

DATASET=${1:?usage: scripts/asen.sh <FashionAI|DARN|DeepFashion> [asen_main.py options]}
shift
STAGE_DIR=${STAGE_DIR:-configs/asen/$DATASET}
DATA_CFG=${DATA_CFG:-$STAGE_DIR/$DATASET.yaml}
SAVE_DIR=${SAVE_DIR:-runs}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
if [ "${NGPU:-1}" -gt 1 ]; then
    TRAIN=("$PYTHON" -m torch.distributed.run --nproc_per_node "$NGPU")
else
    TRAIN=("$PYTHON")
fi

echo "== ASEN++ $DATASET: stage 1"
"${TRAIN[@]}" asen_main.py --cfg "$DATA_CFG" "$STAGE_DIR/s1.yaml" --set "SAVE_DIR=$SAVE_DIR" "$@"
echo "== ASEN++ $DATASET: stage 2 from $SAVE_DIR/${DATASET}_s1/checkpoint.pth.tar (ends with the test MAP of its best checkpoint)"
"${TRAIN[@]}" asen_main.py --cfg "$DATA_CFG" "$STAGE_DIR/s2.yaml" --set "SAVE_DIR=$SAVE_DIR" \
    --resume "$SAVE_DIR/${DATASET}_s1/checkpoint.pth.tar" "$@"
