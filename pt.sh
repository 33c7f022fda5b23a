#!/usr/bin/env bash
# Fashion-FINE pretraining (published: 2 GPUs, fashion_pretrain_e10 values, init from pt_checkpoint.pth).
#   NGPU=2 bash pt.sh [--set key=value ...]
# Environment: CONFIG, OUTPUT_DIR, CHECKPOINT (default checkpoint_pretrain/pt_checkpoint.pth; empty = random
# init), DATA_ROOT, TOKENIZER (default: the config's data.root / data.tokenizer).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
common_args checkpoint_pretrain/pt_checkpoint.pth
launch pretrain.py --config "${CONFIG:-configs/pretrain.yaml}" \
  "${LAUNCH_ARGS[@]}" "$@"
