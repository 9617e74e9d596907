#!/usr/bin/env bash
# Run morphotrust's test suite on this machine: sets up first (idempotent), then pytest on TEST_WORKERS (default 2)
# pytest-xdist workers; tests sharing a session fixture run on one worker (tests/conftest.py). The 25 slowest tests
# are listed at the end. Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium renders the HTML reports in tests (Debian package; needs root, as on CI).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test: installing Debian chromium for the report rendering tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
        || echo "test: could not install chromium: the rendering tests will be skipped"
fi
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder --durations=25 "$@"
