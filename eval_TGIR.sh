#!/usr/bin/env bash
# The former name of eval_tgir.sh (same arguments and environment).
exec bash "$(dirname "$0")/eval_tgir.sh" "$@"
