#!/usr/bin/env bash
# Create the virtual environment (.venv) if missing and install the pinned requirements.
# Re-running is cheap: nothing is reinstalled while requirements.txt is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  # torch==2.14.1 / torchvision==0.29.1 install from local disk for Python 3.11 on the project machines.
  PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
  echo "creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing requirements into .venv (torch from local disk; first time takes a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi
