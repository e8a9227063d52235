#!/usr/bin/env bash
# The README's two commands. Each sets up a fresh machine (installs what is missing, builds
# and installs fusedconv), then runs:
#   bash build_scripts/run.sh bench [bench args]   the main job: `python -m fusedconv bench`
#   bash build_scripts/run.sh test [pytest args]   the test suite
# On a machine with no registry (the device machine) everything must already be installed;
# nothing is fetched when it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

has() { $PY -c "$1" >/dev/null 2>&1; }
pip_install() { echo "[fusedconv setup] pip install $*"; $PY -m pip install -q "$@"; }

setup() {
  # torch==2.13.0 is the CPU build this workplace keeps on disk; any other spec downloads GBs.
  has "import torch" || pip_install torch==2.13.0
  has "import triton, sys; sys.exit(triton.__version__ != '3.6.0')" || pip_install triton==3.6.0
  has "import numpy" || pip_install numpy        # Triton's interpreter, for the kernel tests
  has "import pytest" || pip_install pytest
  # The build goes through setuptools' own bdist_wheel (setuptools >= 70.1).
  has "import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split('.')[:2])) < (70, 1))" \
    || pip_install "setuptools>=70.1"
  echo "[fusedconv setup] building and installing fusedconv (AOT kernels, then the op library)"
  $PY -m pip install --no-build-isolation --no-deps . 2>&1 | grep -E "fusedconv aot|Successfully|error|Error" || true
  has "import fusedconv" || { echo "[fusedconv setup] install failed: run '$PY -m pip install --no-build-isolation -v .'"; exit 1; }
}

job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in
  bench) setup; exec $PY -m fusedconv bench "$@" ;;
  test) setup; exec $PY -m pytest tests -q -p no:warnings "$@" ;;
  *) echo "usage: bash build_scripts/run.sh bench|test [args]"; exit 2 ;;
esac
