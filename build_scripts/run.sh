#!/usr/bin/env bash
# The README's two commands. Each sets up a fresh machine (installs what is missing, builds
# and installs fusedconv), then runs:
#   bash build_scripts/run.sh bench [bench args]   the main job: `python -m fusedconv bench`
#   bash build_scripts/run.sh test [pytest args]   the test suite (skip reasons shown: -rsfE)
#
# Where: the project virtual environment .venv in the checkout, created with `python3 -m venv`
# on first use, so that torch, triton and fusedconv never land silently in whatever python3 is
# first on the PATH. PYTHON=/path/to/python uses that interpreter instead, as is: that is the way
# on a machine with no registry (the device machine), where everything must already be installed;
# nothing is fetched when it is.
#
# Rebuilding takes ~35 s even when the AOT kernels are cached, so the build and install are
# skipped when the interpreter's fusedconv was installed by this script from the same sources
# (a hash of the files that feed the build, the build's environment variables and the installed
# library itself, kept beside the interpreter after each successful install).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$REPO/.venv
# Everything that feeds the wheel: the build's code and the package's own files.
BUILD_INPUTS=(setup.py pyproject.toml csrc triton_kernels python/fusedconv 'build_scripts/*.py')

say() { echo "[fusedconv setup] $*"; }
has() { "$PY" -c "$1" >/dev/null 2>&1; }

choose_python() {
  if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    command -v "$PY" >/dev/null || { say "PYTHON=$PY: no such interpreter"; exit 1; }
    say "python: $PY (from PYTHON; unset it to use the project venv $VENV)"
    STAMP=$REPO/build/run-sh/$(command -v "$PY" | sha256sum | cut -c1-16).installed
    return
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating the project virtual environment $VENV with $(command -v python3) -m venv"
    python3 -m venv "$VENV" || { say "python3 -m venv failed (Debian/Ubuntu: apt install python3-venv), or set PYTHON=/path/to/python"; exit 1; }
  fi
  PY=$VENV/bin/python
  say "python: $PY (the project venv; PYTHON=/path/to/python uses another interpreter)"
  STAMP=$VENV/fusedconv-build.installed
}

install_missing() {
  local missing=()
  # torch==2.13.0 is the CPU build this workplace keeps on disk; any other spec downloads GBs.
  has "import torch" || missing+=(torch==2.13.0)
  has "import triton, sys; sys.exit(triton.__version__ != '3.6.0')" || missing+=(triton==3.6.0)
  has "import numpy" || missing+=(numpy)        # Triton's interpreter, for the kernel tests
  has "import pytest" || missing+=(pytest)
  # The build goes through setuptools' own bdist_wheel (setuptools >= 70.1).
  has "import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split('.')[:2])) < (70, 1))" \
    || missing+=("setuptools>=70.1")
  [ ${#missing[@]} -eq 0 ] && return
  say "pip install ${missing[*]}"
  "$PY" -m pip install -q "${missing[@]}"
}

# The files that feed the build, tracked or new but never ignored ones (build outputs,
# __pycache__), by name and content; without git, the same directories minus those outputs.
build_input_files() {
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$REPO" ls-files -co --exclude-standard -- "${BUILD_INPUTS[@]}"
  else
    # shellcheck disable=SC2068  # unquoted: build_scripts/*.py is a glob here
    (cd "$REPO" && find ${BUILD_INPUTS[@]} -type f ! -path '*/__pycache__/*' ! -name '*.so' \
       ! -name '*.pyc' ! -path '*.egg-info/*' 2>/dev/null)
  fi | LC_ALL=C sort | while read -r f; do
    if [ -f "$REPO/$f" ]; then echo "$f"; fi  # git lists tracked files deleted since
  done
}

sources_hash() {
  (cd "$REPO" && build_input_files | tr '\n' '\0' | xargs -0 -r sha256sum) | sha256sum | cut -c1-64
}

# What the build depends on besides the sources: a changed torch or compiler since the last
# run must not be taken as up to date.
build_inputs() {
  echo "sources $(sources_hash)"
  echo "env FUSEDCONV_ARCHS=${FUSEDCONV_ARCHS:-} FUSEDCONV_PTX_ARCHS=${FUSEDCONV_PTX_ARCHS:-} CC=${CC:-} CXX=${CXX:-}"
  "$PY" -c 'import importlib.metadata as md, sys
print("python", sys.executable, *(f"{d} {md.version(d)}" for d in ("torch", "triton")))' 2>/dev/null \
    || echo "python: unknown"
}

# Which op library is installed now, by content: a `pip install` by hand since the last run
# replaces it, and must not be taken for the one this script built.
installed_library() {
  "$PY" - <<'EOF' 2>/dev/null || echo "installed: unknown"
import hashlib, importlib.util, os
spec = importlib.util.find_spec("fusedconv")  # finds the package without importing torch
lib = spec and spec.origin and os.path.join(os.path.dirname(spec.origin), "_C.so")
if lib and os.path.isfile(lib):
    with open(lib, "rb") as f:
        print("installed", lib, hashlib.sha256(f.read()).hexdigest())
else:
    print("installed: none")
EOF
}

install_state() {
  build_inputs
  installed_library
}

build_and_install() {
  local inputs log=$REPO/build/run-sh-install.log
  # Taken before the build: sources edited while it runs make the next run rebuild.
  inputs=$(build_inputs)
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs"$'\n'"$(installed_library)" ]; then
    say "fusedconv is up to date, skipping build"
    return
  fi
  say "building and installing fusedconv (AOT kernels, then the op library); log: $log"
  mkdir -p "$REPO/build" "$(dirname "$STAMP")"
  rm -f "$STAMP"
  set +e
  (cd "$REPO" && "$PY" -m pip install -v --no-build-isolation --no-deps .) 2>&1 | tee "$log" \
    | grep --line-buffered -E "fusedconv aot|Successfully installed"
  local rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ] || ! has "import fusedconv"; then
    tail -30 "$log"
    say "install failed (full log: $log); by hand: $PY -m pip install --no-build-isolation -v ."
    exit 1
  fi
  { echo "$inputs"; installed_library; } > "$STAMP"
}

main() {
  set -euo pipefail
  local job=${1:-}
  [ $# -gt 0 ] && shift
  case "$job" in
    bench|test) ;;
    *) echo "usage: bash build_scripts/run.sh bench|test [args]   (PYTHON=/path/to/python: use that interpreter, not .venv)"; exit 2 ;;
  esac
  cd "$REPO"
  choose_python
  install_missing
  build_and_install
  case "$job" in
    bench) exec "$PY" -m fusedconv bench "$@" ;;
    # -rsfE: skipped tests with their reasons, beside pytest's default failures and errors.
    # No path here: pyproject's testpaths gives tests/ when the arguments name none, and a
    # named file runs alone instead of beside the whole suite.
    test) exec "$PY" -m pytest -q -p no:warnings -rsfE "$@" ;;
  esac
}

# Sourced (tests/test_run_script.py), it only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
