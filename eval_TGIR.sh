#!/usr/bin/env bash
# Evaluate a TGIR checkpoint on FashionIQ val: R@1/5/10/50 per category and the averages, table + JSON.
#   bash eval_TGIR.sh [CHECKPOINT] [--set eval.gallery=triplets|split eval.exclude_reference=true ...]
# Environment: CONFIG, OUTPUT_DIR, DATA_ROOT, TOKENIZER.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
CHECKPOINT="${1:-checkpoint_tgir_best_ft.pth}"
[ $# -gt 0 ] && shift
common_args ""
NGPU=1 launch tgir.py --config "${CONFIG:-configs/tgir.yaml}" --evaluate \
  --output_dir "${OUTPUT_DIR:-output/FashionFINE_TGIR_eval}" "${LAUNCH_ARGS[@]}" "$@"
