#!/usr/bin/env bash
# The whole framework end to end on the bundled synthetic data, on CPU in about 8 minutes (2 quiet cores):
#   setup -> synthetic FashionGen / FashionIQ / ASEN++ data in the real formats -> prepare_dataset.py ->
#   tokenizer vocabulary -> Fashion-FINE pretraining -> CMR fine-tuning -> CMR evaluation (full + sampled
#   protocols) -> TGIR fine-tuning and evaluation -> ASEN++ stage 1, stage 2 and test -> search.py: a text, a
#   TGIR and an ASEN++ query against catalogues indexed with the trained models (scripts/demo_search.sh).
# Options: DEMO_OUT (default output/demo), SKIP_ASEN=1, WITH_BLIP=1 (also the BLIP variant, if present).
# Running it again replaces the previous demo: its training runs pass --overwrite, which removes only the files
# the framework wrote in their DEMO_OUT folders (anything else there is kept); evaluations rewrite their results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
OUT=${DEMO_OUT:-output/demo}
DATA=data/synthetic
export DATA_ROOT TOKENIZER=$DATA/tokenizer CONFIG OUTPUT_DIR CHECKPOINT

echo "== synthetic data in the real formats ($DATA)"
$PY -m datasets.synthetic all --out "$DATA" --quiet
$PY prepare_dataset.py --data-root "$DATA/fashiongen" --fashioniq-root "$DATA/fashioniq" --quiet
$PY scripts/build_vocab.py from-captions --data-root "$DATA" --out "$TOKENIZER"

echo "== Fashion-FINE pretraining (tiny model, CPU)"
DATA_ROOT=$DATA/fashiongen CONFIG=configs/pretrain_tiny.yaml OUTPUT_DIR=$OUT/pretrain CHECKPOINT="" \
  bash pt.sh --overwrite --set train.progress_bar=false

echo "== cross-modal retrieval fine-tuning from the pretrained checkpoint"
DATA_ROOT=$DATA/fashiongen CONFIG=configs/retrieval_tiny.yaml OUTPUT_DIR=$OUT/retrieval \
  CHECKPOINT=$OUT/pretrain/checkpoint_best.pth bash retrieval.sh --overwrite --set train.progress_bar=false

echo "== cross-modal retrieval evaluation on the test split (both protocols)"
DATA_ROOT=$DATA/fashiongen CONFIG=configs/retrieval_tiny.yaml OUTPUT_DIR=$OUT/retrieval_eval \
  bash eval_cmr.sh "$OUT/retrieval/checkpoint_best.pth" --gallery 6

echo "== text-guided image retrieval fine-tuning and evaluation (FashionIQ)"
DATA_ROOT=$DATA/fashioniq CONFIG=configs/tgir_tiny.yaml OUTPUT_DIR=$OUT/tgir \
  CHECKPOINT=$OUT/pretrain/checkpoint_best.pth bash tgir.sh --overwrite --set train.progress_bar=false
DATA_ROOT=$DATA/fashioniq CONFIG=configs/tgir_tiny.yaml OUTPUT_DIR=$OUT/tgir_eval \
  bash eval_tgir.sh "$OUT/tgir/checkpoint_best.pth" --gallery 4

if [ -z "${SKIP_ASEN:-}" ]; then
  echo "== ASEN++ (attribute-specific similarity)"
  SAVE_DIR=$OUT/asen bash scripts/demo_asen.sh
fi
echo "== use the trained models: index catalogues and query them (search.py)"
DEMO_OUT=$OUT bash scripts/demo_search.sh
if [ -n "${WITH_BLIP:-}" ] && [ -f scripts/demo_blip.sh ]; then
  echo "== Fashion-FINE on BLIP"
  DEMO_OUT=$OUT bash scripts/demo_blip.sh
fi

echo
echo "== done. Results:"
echo "   CMR test table:   $OUT/retrieval_eval/results_test.json (pretraining: $OUT/pretrain/results_test.json)"
echo "                     each query's top 10: $OUT/retrieval_eval/topk_test_*.jsonl, page: gallery_test.html"
echo "   TGIR val table:   $OUT/tgir_eval/results_val.json (top 10: topk_val_*.jsonl, page: gallery_val.html)"
[ -z "${SKIP_ASEN:-}" ] && echo "   ASEN++ test MAP:  $OUT/asen/synthetic_s2/map_test.json"
echo "   search queries:   $OUT/search/*_query.html (gallery pages) and *_query.json"
echo "   logs and checkpoints under $OUT/"
