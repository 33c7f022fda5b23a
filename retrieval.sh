#!/usr/bin/env bash
# Fashion-FINE cross-modal retrieval fine-tuning on FashionGen (published: 2 GPUs, from FINE pretraining).
#   NGPU=2 bash retrieval.sh [--set key=value ...]
# Environment: CONFIG, OUTPUT_DIR, CHECKPOINT (default output/FashionFINE_pt/checkpoint_best.pth), DATA_ROOT, TOKENIZER.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
common_args output/FashionFINE_pt/checkpoint_best.pth
launch retrieval.py --config "${CONFIG:-configs/retrieval.yaml}" \
  "${LAUNCH_ARGS[@]}" "$@"
