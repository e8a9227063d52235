#!/usr/bin/env bash
# One call on the device machine: build, test natively and with the sm_89 PTX forced, time.
#   bash build_scripts/device_check.sh [quick|native|ptx|suites|gluon|verify|compare]   logs go to $OUT (default ./device_out)
# "quick" skips the forced-PTX suite and runs only the fp32 benchmark. A full run can outlast
# one device call (10 minutes): "native" is the native suite and the main benchmark, "ptx" the
# forced-PTX suite and the other benchmarks; the two together are the full run. "suites" is both
# suites without benchmarks. The suites run in PYTEST_WORKERS processes (default 6, pytest-xdist;
# tests marked xdist_group stay on one worker; 0 runs them in this process). SKIP_BUILD=1 tests the
# fusedconv already installed. The device copy of the
# checkout has no ../shared: copy it to ./shared (git-ignored) before the call.
# At most 8 files come back from a device call, so logs are gathered into few files.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() { echo "== $* ($(date +%T))"; }

# The device image sets CXX=/opt/gcc/bin/g++, a GCC whose links carry their own copy of
# libstdc++'s internals (std::locale, ostream inserters): code built with it and loaded next to
# libtorch crashed in iostreams and locale teardown. Build with the system compiler instead.
if [ -x /usr/bin/g++ ]; then export CC=/usr/bin/gcc CXX=/usr/bin/g++; fi

step environment
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  echo "CXX=${CXX:-unset} ($(${CXX:-g++} --version | head -1))"
} 2>&1 | tee "$OUT/summary.txt"

step build
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  echo "SKIP_BUILD=1: testing the fusedconv already installed"
elif ! $PY -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
[ -f "$OUT/build.log" ] && grep "fusedconv aot" "$OUT/build.log" | tail -2
(cd /tmp && $PY -m fusedconv info >> "$OUT/summary.txt" 2>&1) || status=1
grep -m3 "fusedconv\|cubins\|running" "$OUT/summary.txt"
rm -f "$OUT/build.log"

run_suite() {  # name, part (all | rest | alone), env...; returns 1 on a failure
  local name=$1 part=$2; shift 2
  step "pytest ($name, $part)"
  # The interpreter tests run on CPU tensors and need no GPU: CI runs them, and here they
  # would spend minutes of device time (the native suite ran ~540 s without them, H100).
  local common=(tests -q -p no:warnings -rfE --ignore=tests/test_kernels_interpreter.py) rc=0
  local workers=()
  if [ "${PYTEST_WORKERS:-6}" -gt 0 ] && $PY -c "import xdist" 2>/dev/null; then
    workers=(-n "${PYTEST_WORKERS:-6}" --dist loadgroup)
  fi
  # Tests marked `alone` read device-wide state that other processes change: after the rest,
  # with nothing else running.
  if [ "$part" != alone ]; then
    env "$@" $PY -m pytest "${common[@]}" --durations=8 -m "not alone" "${workers[@]}" \
      > "$OUT/pytest_$name.log" 2>&1 || rc=1
  fi
  if [ "$part" != rest ]; then
    env "$@" $PY -m pytest "${common[@]}" -m alone >> "$OUT/pytest_$name.log" 2>&1 || rc=1
  fi
  grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed|skipped|deselected|errors?) " "$OUT/pytest_$name.log" | tail -8
  return $rc
}
phase=${1:-all}

# "compare": this build against the one from the source tree in $BASELINE (e.g. `git archive`
# of main before a change, carried to the device): every output bit for bit, natively and
# through the sm_89 PTX, then both builds' benchmark timings in this one run.
if [ "$phase" = compare ]; then
  step "build baseline from ${BASELINE:?set BASELINE to the source tree to compare against}"
  if ! $PY -m pip install --no-build-isolation --no-deps --target /tmp/baseline "$BASELINE" > "$OUT/build_baseline.log" 2>&1; then
    tail -40 "$OUT/build_baseline.log"; echo "BASELINE BUILD FAILED"; exit 1
  fi
  rm -f "$OUT/build_baseline.log"
  for ptx in "" 89; do
    step "dump outputs (FUSEDCONV_FORCE_PTX=${ptx:-unset})"
    FUSEDCONV_FORCE_PTX=$ptx PYTHONPATH=/tmp/baseline $PY benchmarks/compare_builds.py dump /tmp/baseline_$ptx.pt || status=1
    FUSEDCONV_FORCE_PTX=$ptx $PY benchmarks/compare_builds.py dump /tmp/current_$ptx.pt || status=1
    $PY benchmarks/compare_builds.py compare /tmp/baseline_$ptx.pt /tmp/current_$ptx.pt 2>&1 | tee -a "$OUT/compare.txt" || status=1
  done
  step "bench, baseline then current"
  for build in baseline current; do
    path=$([ $build = baseline ] && echo /tmp/baseline || echo "")
    echo "== $build" | tee -a "$OUT/bench.txt"
    PYTHONPATH=$path $PY -m fusedconv bench --dtype fp32,fp16,bf16 --peers fusedconv,eager 2>&1 | tee -a "$OUT/bench.txt" || status=1
  done
  step "done, status $status"
  exit $status
fi

# Steps of "gluon" and "verify" start only while DEADLINE (seconds since the script began,
# default 480) leaves a minute.
time_left() { [ $SECONDS -lt $(( ${DEADLINE:-480} - 60 )) ] || { echo "skipped: $* (deadline)"; false; }; }
gluon_check() {  # timeout seconds: the Gluon kernels against their twins through the sm_89 PTX
  FUSEDCONV_FORCE_PTX=89 timeout "$1" $PY benchmarks/gluon_fma_check.py --arch 89 ${GLUON_CHECK_ARGS:-} 2>&1 \
    | tee "$OUT/gluon_check.txt" || status=1
}
bench_both() {  # dtypes, timeout seconds: the benchmark through the sm_89 PTX, then natively
  for ptx in 89 ""; do
    time_left bench ptx=$ptx || continue
    echo "== FUSEDCONV_FORCE_PTX=${ptx:-unset}" | tee -a "$OUT/bench.txt"
    FUSEDCONV_FORCE_PTX=$ptx timeout "$2" $PY -m fusedconv bench --dtype "$1" --peers fusedconv,eager \
      2>&1 | tee -a "$OUT/bench.txt" || status=1
  done
}

# "gluon": what a Gluon kernel change needs first, in a few minutes: the kernels against their
# twins and float64 through the sm_89 PTX (each pass and the op timed), tests/test_gluon.py
# (natively it runs itself again under the forced PTX), and the fp32 benchmark through the
# sm_89 PTX and natively. GLUON_CHECK_ARGS go to gluon_fma_check.py here and in "verify"
# (e.g. "--maxnreg 0,112,128").
if [ "$phase" = gluon ]; then
  step "Gluon kernels against their twins"
  gluon_check 240
  step "pytest test_gluon"
  $PY -m pytest tests/test_gluon.py -q -p no:warnings -rfE > "$OUT/pytest_gluon.log" 2>&1 || status=1
  tail -5 "$OUT/pytest_gluon.log"
  step bench
  bench_both fp32 120
  step "done, status $status"
  exit $status
fi

# "verify": both suites at once (their `alone` tests after, one at a time), the Gluon kernels
# against their twins and float64 through the sm_89 PTX (each pass and the op timed), then the
# benchmark of every dtype through the sm_89 PTX and natively: what a kernel change needs, in
# one call.
if [ "$phase" = verify ]; then
  PYTEST_WORKERS=${PYTEST_WORKERS:-7} run_suite native rest & native=$!
  PYTEST_WORKERS=${PYTEST_WORKERS:-7} run_suite sm89_ptx rest FUSEDCONV_FORCE_PTX=89 & ptx=$!
  wait $native || status=1
  wait $ptx || status=1
  run_suite native alone || status=1
  run_suite sm89_ptx alone FUSEDCONV_FORCE_PTX=89 || status=1
  step "Gluon kernels against their twins"
  time_left gluon check && gluon_check 150
  step bench
  bench_both fp32,fp16,bf16 150
  step "done, status $status"
  exit $status
fi

[ "$phase" = ptx ] || run_suite native all || status=1
[ "$phase" = quick ] || [ "$phase" = native ] || run_suite sm89_ptx all FUSEDCONV_FORCE_PTX=89 || status=1
if [ "$phase" = suites ]; then
  step "done, status $status"
  exit $status
fi

step bench
bench() {  # name, bench args...
  local name=$1; shift
  $PY -m fusedconv bench --json "$OUT/bench_$name.json" "$@" 2>&1 | tee -a "$OUT/bench.txt" || status=1
}
seed=shared/baselines/seed_triton.py
if [ "$phase" = quick ]; then
  bench main --peers fusedconv,eager
fi
if [ "$phase" = all ] || [ "$phase" = native ]; then
  (cd /tmp && $PY -m fusedconv export -o "$OUT/model_new.py") || status=1
  bench main --dtype fp32,fp16,bf16 --peer "$seed" --peer "$OUT/model_new.py" --small --chart "$OUT/bench_main.png"
fi
if [ "$phase" = all ] || [ "$phase" = ptx ]; then
  bench tf32 --precision high --peer "$seed"
  bench suite --suite --chart "$OUT/bench_suite.png"
  FUSEDCONV_FORCE_PTX=89 bench sm89_ptx --peers fusedconv,eager
fi
# One JSON file back instead of several (a device call returns at most 8 files).
$PY - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
parts = {p.stem.removeprefix("bench_"): p for p in sorted(out.glob("bench_*.json")) if p.name != "bench_all.json"}
(out / "bench_all.json").write_text(json.dumps({k: json.loads(p.read_text()) for k, p in parts.items()}, indent=1))
for p in parts.values():
    p.unlink()
PY

step "done, status $status"
exit $status
