#!/usr/bin/env bash
# Run a Python entry point on NGPU processes per machine: torchrun when NGPU or NNODES > 1, else plain python.
# Usage (from the other scripts): source scripts/launch.sh; launch pretrain.py --config ...
# NGPU (processes per machine) defaults to the number of visible GPUs (1 when there are none); MASTER_PORT to 47689.
# Several machines: NNODES (default 1), NODE_RANK (this machine's index, 0 .. NNODES-1) and MASTER_ADDR (the address
# of machine 0, which hosts the rendezvous), with the same NNODES, MASTER_ADDR and MASTER_PORT on every machine.
launch() {
  local root python ngpu nnodes status=0
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  python="${PYTHON:-$root/.venv/bin/python}"
  [ -x "$python" ] || python=python3
  ngpu="${NGPU:-$("$python" -c 'import torch; print(max(1, torch.cuda.device_count()))' 2>/dev/null || echo 1)}"
  nnodes="${NNODES:-1}"
  if [ "$nnodes" != 1 ]; then
    if ! [[ "$nnodes" =~ ^[1-9][0-9]*$ && "${NODE_RANK:-}" =~ ^[0-9]+$ && "${NODE_RANK:-}" -lt "$nnodes" \
          && -n "${MASTER_ADDR:-}" ]]; then
      echo "error: NNODES=$nnodes needs NODE_RANK (0 .. NNODES-1, this machine; got '${NODE_RANK:-}') and MASTER_ADDR" \
           "(machine 0's address; got '${MASTER_ADDR:-}')" >&2
      return 2
    fi
  fi
  # A SIGTERM for this shell too (Slurm signals every process of a job step) waits for the launched processes,
  # which checkpoint and stop, and ends the launch with 143 (torchrun reports its own SIGTERM as a failure, 1).
  LAUNCH_STOPPED=""
  trap 'LAUNCH_STOPPED=1' TERM
  if [ "$nnodes" != 1 ]; then
    "$python" -m torch.distributed.run --nnodes="$nnodes" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
      --nproc_per_node="$ngpu" --master_port="${MASTER_PORT:-47689}" "$@" || status=$?
  elif [ "$ngpu" -gt 1 ]; then
    "$python" -m torch.distributed.run --nproc_per_node="$ngpu" --master_port="${MASTER_PORT:-47689}" "$@" \
      || status=$?
  else
    "$python" "$@" || status=$?
  fi
  trap - TERM
  if [ -n "$LAUNCH_STOPPED" ]; then return 143; fi
  return "$status"
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
