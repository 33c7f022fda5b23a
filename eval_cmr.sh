#!/usr/bin/env bash
# Evaluate a CMR checkpoint on the FashionGen test split: full and sampled protocols, table + JSON.
#   bash eval_cmr.sh [CHECKPOINT] [--set eval.protocol=full|sampled|both ...]
# Environment: CHECKPOINT (when no argument is given), CONFIG, OUTPUT_DIR, DATA_ROOT, TOKENIZER.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
CHECKPOINT="${CHECKPOINT:-checkpoint_cmr_best_ft.pth}"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  CHECKPOINT="$1"
  shift
fi
common_args ""
NGPU=1 NNODES=1 launch retrieval.py --config "${CONFIG:-configs/retrieval.yaml}" --evaluate \
  "${LAUNCH_ARGS[@]}" "$@"
