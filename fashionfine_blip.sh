#!/usr/bin/env bash
# Fashion-FINE on BLIP, both stages (published: 4 GPUs through torch.distributed.run):
#   NGPU=4 bash fashionfine_blip.sh [--set key=value ...]        (extra arguments go to both stages)
# Stage 1 (configs/blip/retrieval_fashionfine_1.yaml: sign-prefixed captions, phrase branch, symbol loss;
# from BLIP's model_base.pth) writes checkpoint_{e}.pth after every epoch; stage 2
# (retrieval_fashionfine_2.yaml: plain captions) starts from STAGE1_CHECKPOINT, by default the third
# epoch's, as published.
# Environment: CONFIG1, CONFIG2, OUTPUT_DIR1, OUTPUT_DIR2, CHECKPOINT (stage-1 weights; default: the
# config's model_base.pth), STAGE1_CHECKPOINT, DATA_ROOT, TOKENIZER, NGPU, MASTER_PORT.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/launch.sh
OUT1="${OUTPUT_DIR1:-output/retrieval_fashionfine_fashiongen_ft_1}"
OUT2="${OUTPUT_DIR2:-output/retrieval_fashionfine_fashiongen_ft_2}"
common_args ""
launch train_blip.py --config "${CONFIG1:-configs/blip/retrieval_fashionfine_1.yaml}" --output_dir "$OUT1" \
  "${LAUNCH_ARGS[@]}" "$@"
CHECKPOINT="${STAGE1_CHECKPOINT:-$OUT1/checkpoint_2.pth}" common_args ""
launch train_blip.py --config "${CONFIG2:-configs/blip/retrieval_fashionfine_2.yaml}" --output_dir "$OUT2" \
  "${LAUNCH_ARGS[@]}" "$@"
