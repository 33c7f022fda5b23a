#!/usr/bin/env bash
# Fashion-FINE cross-modal retrieval fine-tuning on FashionGen (published: 2 GPUs, from FINE pretraining).
#   NGPU=2 bash retrieval.sh [--set key=value ...]
# Environment: CONFIG, OUTPUT_DIR, CHECKPOINT (default FashionFINE_pt/checkpoint_best.pth), DATA_ROOT, TOKENIZER.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
common_args FashionFINE_pt/checkpoint_best.pth
launch retrieval.py --config "${CONFIG:-configs/retrieval.yaml}" \
  --output_dir "${OUTPUT_DIR:-output/FashionFINE_retrieval}" "${LAUNCH_ARGS[@]}" "$@"
