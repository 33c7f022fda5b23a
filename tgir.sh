#!/usr/bin/env bash
# Fashion-FINE text-guided image retrieval fine-tuning on FashionIQ (published: 1 GPU, from FINE pretraining).
#   bash tgir.sh [--set key=value ...]
# Environment: NGPU (default 1), CONFIG, OUTPUT_DIR, CHECKPOINT (default output/FashionFINE_pt/checkpoint_best.pth),
# DATA_ROOT, TOKENIZER.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
common_args output/FashionFINE_pt/checkpoint_best.pth
NGPU="${NGPU:-1}" launch tgir.py --config "${CONFIG:-configs/tgir.yaml}" \
  "${LAUNCH_ARGS[@]}" "$@"
