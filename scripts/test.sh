#!/usr/bin/env bash
# Set up (if needed) and run the test suite; extra arguments go to pytest (e.g. -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Waiting OpenMP threads sleep instead of spinning (see engine/__init__.py); pytest loads torch before engine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
# Two pytest-xdist workers (TEST_WORKERS=0 runs in one process); a test file stays on one worker
# (tests/conftest.py), so its fixtures are built once.
WORKERS=${TEST_WORKERS:-2}
if [ "$WORKERS" = 0 ]; then
  .venv/bin/python -m pytest -q "$@"
else
  .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadgroup "$@"
fi
