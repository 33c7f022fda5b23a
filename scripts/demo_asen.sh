#!/usr/bin/env bash
# ASEN++ demo on the synthetic attribute data (CPU, about 4 minutes on 2 quiet cores): write the data, train
# stage 1 and stage 2 with the tiny configs, print the test MAP table, embed the test images for one attribute.
# Outputs go to $SAVE_DIR (default runs): synthetic_s1/, synthetic_s2/ (checkpoints, logs, map_test.json,
# embeddings_sleeve_length.npz). Running it again replaces the previous demo runs there (both stages pass
# --overwrite, which removes only the files the framework wrote; anything else in the folders is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export PYTHON
SAVE_DIR=${SAVE_DIR:-runs}
export SAVE_DIR
DATA_CFG=data/synthetic/asen/synthetic.yaml

echo "== ASEN++ demo: synthetic data (data/synthetic/asen)"
"$PYTHON" -m datasets.synthetic asen --out data/synthetic --quiet
DATA_CFG=$DATA_CFG STAGE_DIR=configs/asen/synthetic scripts/asen.sh synthetic --set DEVICE=cpu --overwrite
echo "== ASEN++ demo: embeddings of the test images for sleeve_length"
"$PYTHON" asen_main.py --cfg "$DATA_CFG" configs/asen/synthetic/s2.yaml --set "SAVE_DIR=$SAVE_DIR" DEVICE=cpu \
    --resume "$SAVE_DIR/synthetic_s2/model_best.pth.tar" --embed data/synthetic/asen/img/test \
    --attribute sleeve_length --out "$SAVE_DIR/synthetic_s2/embeddings_sleeve_length.npz"
