#!/usr/bin/env bash
# Evaluate a Fashion-FINE-on-BLIP checkpoint on the FashionGen test annotations (strict load): the published
# full protocol (each query's top k_test=256 scores kept) and the sampled protocol, table + results_test.json.
#   bash eval_fashionfine_blip.sh [CHECKPOINT] [--set eval.protocol=full|sampled|both ...]
# CHECKPOINT defaults to the released fashionfine_blip_3modules.pth.
# Environment: CHECKPOINT (when no argument is given), CONFIG (default configs/blip/retrieval_fashionfine_eval.yaml), OUTPUT_DIR, DATA_ROOT, TOKENIZER.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
CHECKPOINT="${CHECKPOINT:-fashionfine_blip_3modules.pth}"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  CHECKPOINT="$1"
  shift
fi
common_args ""
NGPU=1 NNODES=1 launch train_blip.py --config "${CONFIG:-configs/blip/retrieval_fashionfine_eval.yaml}" --evaluate \
  "${LAUNCH_ARGS[@]}" "$@"
