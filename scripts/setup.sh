#!/usr/bin/env bash
# Set up morphotrust on a fresh machine (idempotent): the workflow's Python environment in .venv
# (pinned: requirements.txt) and CellProfiler's own environment in .venv-cellprofiler.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
quiet_pip() {  # pip, without the machine's notes about absent local package indexes
    "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import morphotrust, torch, timm, snakemake" 2>/dev/null \
        || ! cmp -s requirements.txt .venv/.morphotrust-requirements; then
    echo "setup: installing Python packages (requirements.txt; torch is large, a few minutes)"
    quiet_pip .venv/bin/python -m pip install -q --upgrade "pip>=24"
    quiet_pip .venv/bin/python -m pip install -q -r requirements.txt
    quiet_pip .venv/bin/python -m pip install -q --no-deps -e .
    cp requirements.txt .venv/.morphotrust-requirements
fi

if [ -f scripts/install_cellprofiler.sh ]; then
    bash scripts/install_cellprofiler.sh
fi
echo "setup: done"
