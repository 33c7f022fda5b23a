#!/usr/bin/env bash
# Use the models the demo trained (scripts/demo.sh runs this last): index three catalogues with search.py and
# ask one query of each kind, printing the top-10 tables and writing gallery pages (HTML) and JSON.
#   text -> FashionGen test images (CMR model), reference image + modification text -> FashionIQ dresses (TGIR
#   model), image + attribute -> ASEN++ test images (ASEN++ stage-2 model).
# Options: DEMO_OUT (default output/demo), SKIP_ASEN=1. Outputs: $DEMO_OUT/search/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${DEMO_OUT:-output/demo}
DATA=data/synthetic
S=$OUT/search
mkdir -p "$S"

echo "== search: a text query against the FashionGen test images (CMR model)"
$PY search.py index --checkpoint "$OUT/retrieval/checkpoint_best.pth" --fashiongen "$DATA/fashiongen" \
    --out "$S/fashiongen_test.index"
$PY search.py query --checkpoint "$OUT/retrieval/checkpoint_best.pth" --index "$S/fashiongen_test.index" \
    --text "striped shoulder bag in orange" --category "TOTE BAGS" --json "$S/text_query.json" \
    --html "$S/text_query.html"

echo "== search: a reference image + modification text against the FashionIQ dress gallery (TGIR model)"
REF=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))[0])" "$DATA/fashioniq/image_splits/split.dress.val.json")
$PY search.py index --checkpoint "$OUT/tgir/checkpoint_best.pth" --fashioniq "$DATA/fashioniq" --category dress \
    --out "$S/fashioniq_dress_val.index"
$PY search.py query --checkpoint "$OUT/tgir/checkpoint_best.pth" --index "$S/fashioniq_dress_val.index" \
    --image "$DATA/fashioniq/images/$REF.png" --text "is longer and darker" --json "$S/tgir_query.json" \
    --html "$S/tgir_query.html"

if [ -z "${SKIP_ASEN:-}" ]; then
  echo "== search: an image + attribute against the ASEN++ test images (ASEN++ stage-2 model)"
  ASEN=$OUT/asen/synthetic_s2/model_best.pth.tar
  $PY search.py index --checkpoint "$ASEN" --asen-split test --attribute sleeve_length --data-root "$DATA" \
      --out "$S/asen_test_sleeve_length.index"
  $PY search.py query --checkpoint "$ASEN" --index "$S/asen_test_sleeve_length.index" \
      --image "$DATA/asen/img/test/000000.png" --attribute sleeve_length --json "$S/asen_query.json" \
      --html "$S/asen_query.html"
fi
echo "   search results: $S/*_query.html (gallery pages), $S/*_query.json"
