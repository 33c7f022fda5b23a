#!/usr/bin/env bash
# Fashion-FINE on BLIP on the bundled synthetic FashionGen data (tiny config, CPU, about 3 minutes):
#   image extraction -> stage 1 (sign-prefixed captions, symbol loss) -> stage 2 (plain captions, from stage
#   1's third-epoch checkpoint) -> evaluation of the selected stage-2 model (both protocols, table + JSON).
# Run by `WITH_BLIP=1 bash scripts/demo.sh`, or alone (it writes whatever synthetic data is missing).
# Options: DEMO_OUT (default output/demo). Running it again replaces the previous BLIP demo: both stages pass
# --overwrite, which removes only the files the framework wrote in their folders.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
PY=.venv/bin/python
OUT=${DEMO_OUT:-output/demo}
DATA=data/synthetic
export DATA_ROOT=$DATA/fashiongen TOKENIZER=$DATA/tokenizer NGPU=1

echo "== synthetic FashionGen with extracted images ($DATA_ROOT)"
[ -f "$DATA_ROOT/fashiongen_256_256_train.h5" ] || $PY -m datasets.synthetic fashiongen --out "$DATA" --quiet
$PY prepare_dataset.py --data-root "$DATA_ROOT" --extract-images --quiet
[ -f "$TOKENIZER/vocab.txt" ] || $PY scripts/build_vocab.py from-captions --data-root "$DATA" --out "$TOKENIZER"

echo "== Fashion-FINE on BLIP: stage 1 then stage 2 (tiny model, CPU)"
CONFIG1=configs/blip/retrieval_fashionfine_1_tiny.yaml CONFIG2=configs/blip/retrieval_fashionfine_2_tiny.yaml \
  OUTPUT_DIR1=$OUT/blip_stage1 OUTPUT_DIR2=$OUT/blip_stage2 CHECKPOINT="" \
  bash fashionfine_blip.sh --overwrite --set train.progress_bar=false

echo "== Fashion-FINE on BLIP: evaluation on the test split (published top-k full protocol + sampled protocol)"
CONFIG=configs/blip/retrieval_fashionfine_eval_tiny.yaml OUTPUT_DIR=$OUT/blip_eval \
  bash eval_fashionfine_blip.sh "$OUT/blip_stage2/checkpoint_last.pth"
echo "   BLIP-variant CMR test table: $OUT/blip_eval/results_test.json"
