#!/usr/bin/env bash
# Set up (if needed) and run the test suite; extra arguments go to pytest (e.g. -k resume).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# tests/test_gallery_browser.py opens a gallery page in headless Chromium: install it when missing and we can.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  if ! { DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q chromium >/dev/null 2>&1 ||
         { timeout 300 apt-get update -q >/dev/null 2>&1 &&
           DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q chromium >/dev/null 2>&1; }; }; then
    echo "scripts/test.sh: could not install chromium with apt-get; the browser test skips (or fails with FASHIONFINE_REQUIRE_BROWSER)" >&2
  fi
fi
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
