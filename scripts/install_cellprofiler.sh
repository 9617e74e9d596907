#!/usr/bin/env bash
# Install headless CellProfiler 4.2.8.1 into .venv-cellprofiler/ at the repository root.
#
# CellProfiler 4 needs its own environment: it pins old numpy/scipy and only installs on CPython 3.9
# here. Route (see docs: resources/cellprofiler/README.md):
#   1. a venv from CPython 3.9 (pyenv's, or $CELLPROFILER_PYTHON),
#   2. numpy 1.24.4 + Cython < 3, then python-javabridge built without build isolation (an isolated
#      build compiles against numpy 2 and fails),
#   3. CellProfiler's runtime requirements, pinned in scripts/cellprofiler-requirements.txt
#      (without wxPython and mysqlclient: GUI / ExportToDatabase only),
#   4. cellprofiler==4.2.8.1 --no-deps.
# A JDK is needed (javabridge compiles against it and CellProfiler starts a JVM); when `javac` is
# missing and we are root on Debian, default-jdk-headless is installed with apt-get.
#
# Idempotent: does nothing when .venv-cellprofiler/bin/cellprofiler --version already reports 4.2.8.1.
# Environment: CELLPROFILER_VENV (install folder), CELLPROFILER_PYTHON (a CPython 3.9 interpreter).
set -euo pipefail

CP_VERSION=4.2.8.1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CELLPROFILER_VENV:-$ROOT/.venv-cellprofiler}
REQUIREMENTS=$ROOT/scripts/cellprofiler-requirements.txt
LOG=  # made once there is something to log

die() {
    echo "install_cellprofiler: error: $*" >&2
    exit 1
}

# Run a step quietly; on failure show the end of its output and where the full log is.
step() {
    local what=$1
    shift
    echo "install_cellprofiler: $what"
    if ! "$@" >>"$LOG" 2>&1; then
        echo "----- last lines of the log -----" >&2
        tail -n 30 "$LOG" >&2
        die "$what failed (full log: $LOG)"
    fi
}

installed_version() {
    "$VENV/bin/cellprofiler" --version 2>/dev/null | tail -n 1
}

if [[ "$(installed_version)" == "$CP_VERSION" ]]; then
    echo "install_cellprofiler: CellProfiler $CP_VERSION already installed in $VENV"
    exit 0
fi

# --- CPython 3.9 -----------------------------------------------------------------------------------
PYTHON=${CELLPROFILER_PYTHON:-}
if [[ -z "$PYTHON" ]]; then
    command -v pyenv >/dev/null 2>&1 ||
        die "pyenv not found, and CELLPROFILER_PYTHON is not set. CellProfiler $CP_VERSION needs CPython 3.9: install it (e.g. 'pyenv install 3.9.18') or set CELLPROFILER_PYTHON=/path/to/python3.9"
    PYENV_ROOT_DIR=$(pyenv root)
    PYTHON=$(ls -d "$PYENV_ROOT_DIR"/versions/3.9.* 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$PYTHON" ]] ||
        die "no CPython 3.9 under $PYENV_ROOT_DIR/versions (found: $(ls "$PYENV_ROOT_DIR/versions" 2>/dev/null | tr '\n' ' ')). CellProfiler $CP_VERSION needs Python 3.9: run 'pyenv install 3.9.18' or set CELLPROFILER_PYTHON"
    PYTHON=$PYTHON/bin/python
fi
[[ -x "$PYTHON" ]] || die "CELLPROFILER_PYTHON=$PYTHON is not an executable"
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    die "$PYTHON does not run"
[[ "$PY_VERSION" == "3.9" ]] || die "$PYTHON is Python $PY_VERSION; CellProfiler $CP_VERSION needs Python 3.9"

LOG=$(mktemp -t install_cellprofiler.XXXXXX.log)

# --- JDK -------------------------------------------------------------------------------------------
if ! command -v javac >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        step "installing a JDK (Debian default-jdk-headless)" \
            bash -c "apt-get update -qq && apt-get install -y -qq default-jdk-headless"
    else
        die "no JDK found (javac missing). Install one (Debian/Ubuntu: 'sudo apt-get install default-jdk-headless') and run this again"
    fi
fi

# --- the environment -------------------------------------------------------------------------------
echo "install_cellprofiler: installing CellProfiler $CP_VERSION into $VENV with $PYTHON (log: $LOG)"
rm -rf "$VENV"
step "creating the venv" "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --no-input --disable-pip-version-check)
step "installing numpy and Cython" "${PIP[@]}" numpy==1.24.4 Cython==0.29.37 wheel==0.45.1
step "building python-javabridge" "${PIP[@]}" --no-build-isolation python-javabridge==4.0.5
step "installing CellProfiler's requirements" "${PIP[@]}" -r "$REQUIREMENTS"
step "installing CellProfiler $CP_VERSION" "${PIP[@]}" --no-deps "cellprofiler==$CP_VERSION"

VERSION=$(installed_version)
[[ "$VERSION" == "$CP_VERSION" ]] ||
    die "installed, but '$VENV/bin/cellprofiler --version' reports '$VERSION' instead of $CP_VERSION (log: $LOG)"
echo "install_cellprofiler: done: $VENV/bin/cellprofiler ($VERSION)"
rm -f "$LOG"
