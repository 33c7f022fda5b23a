#!/usr/bin/env bash
# Run a Python entry point on NGPU processes: torchrun when NGPU > 1, plain python otherwise.
# Usage (from the other scripts): source scripts/launch.sh; launch pretrain.py --config ...
# NGPU defaults to the number of visible GPUs (1 when there are none); MASTER_PORT to 47689.
launch() {
  local root python ngpu
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  python="${PYTHON:-$root/.venv/bin/python}"
  [ -x "$python" ] || python=python3
  ngpu="${NGPU:-$("$python" -c 'import torch; print(max(1, torch.cuda.device_count()))' 2>/dev/null || echo 1)}"
  if [ "$ngpu" -gt 1 ]; then
    "$python" -m torch.distributed.run --nproc_per_node="$ngpu" --master_port="${MASTER_PORT:-47689}" "$@"
  else
    "$python" "$@"
  fi
}

# Common flags from the environment: CHECKPOINT (empty = none), OUTPUT_DIR, DATA_ROOT, TOKENIZER. Sets the array
# LAUNCH_ARGS; the config's own values apply where a variable is unset (output_dir for training, eval_output_dir
# for --evaluate), so a script writes where `python <entry point>` with the same config writes.
common_args() {
  local default_checkpoint="$1"
  LAUNCH_ARGS=()
  local checkpoint="${CHECKPOINT-$default_checkpoint}"
  [ -n "$checkpoint" ] && LAUNCH_ARGS+=(--checkpoint "$checkpoint")
  [ -n "${OUTPUT_DIR:-}" ] && LAUNCH_ARGS+=(--output_dir "$OUTPUT_DIR")
  [ -n "${DATA_ROOT:-}" ] && LAUNCH_ARGS+=(--set "data.root=$DATA_ROOT")
  [ -n "${TOKENIZER:-}" ] && LAUNCH_ARGS+=(--set "data.tokenizer=$TOKENIZER")
  return 0
}
