#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): pretraining step eager and compiled, CMR evaluation at full size,
# the BLIP step at the published batch, ASEN++ MAP at DARN size, two-process NCCL with two GPUs; one JSON file.
#
#   bash benchmarks/gpu_check.sh --out output/gpu_check.json     # on a GPU machine, under 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/dry.json   # CPU, tiny sizes: the script works
#
# Exits non-zero when a part failed (1) or the arguments are wrong (2); the JSON says which part and why.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
fi
exec "$py" benchmarks/gpu_check.py "$@"
