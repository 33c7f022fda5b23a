#!/usr/bin/env bash
# Evaluate a TGIR checkpoint on FashionIQ val: R@1/5/10/50 per category and the averages, table + JSON.
#   bash eval_tgir.sh [CHECKPOINT] [--set eval.gallery=triplets|split eval.exclude_reference=true ...]
# (eval_TGIR.sh runs this script.) A first argument starting with "-" is passed on (e.g. --help), and
# CHECKPOINT keeps its default.
# Environment: CHECKPOINT (when no argument is given), CONFIG, OUTPUT_DIR, DATA_ROOT, TOKENIZER.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
CHECKPOINT="${CHECKPOINT:-checkpoint_tgir_best_ft.pth}"
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then
  CHECKPOINT="$1"
  shift
fi
common_args ""
NGPU=1 NNODES=1 launch tgir.py --config "${CONFIG:-configs/tgir.yaml}" --evaluate \
  "${LAUNCH_ARGS[@]}" "$@"
