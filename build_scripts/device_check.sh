#!/usr/bin/env bash
# One call on the device machine: build, test natively and with the sm_89 PTX forced, time.
#   bash build_scripts/device_check.sh [quick]     logs go to $OUT (default ./device_out)
# "quick" skips the forced-PTX suite and runs only the fp32 benchmark.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() { echo "== $* ($(date +%T))"; }

step environment
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/env.txt"

step build
if ! $PY -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
grep "fusedconv aot" "$OUT/build.log" | tail -2
(cd /tmp && $PY -m fusedconv info > "$OUT/info.txt" 2>&1) || status=1
head -3 "$OUT/info.txt"

run_suite() {  # name, env...
  local name=$1; shift
  step "pytest ($name)"
  env "$@" $PY -m pytest tests -q -p no:warnings -rfE --junitxml="$OUT/pytest_$name.xml" \
    > "$OUT/pytest_$name.log" 2>&1 || status=1
  tail -4 "$OUT/pytest_$name.log"
}
run_suite native
[ "${1:-}" = quick ] || run_suite sm89_ptx FUSEDCONV_FORCE_PTX=89

step bench
dtypes="fp32 fp16 bf16"; [ "${1:-}" = quick ] && dtypes=fp32
for dt in $dtypes; do
  $PY -m fusedconv bench --dtype "$dt" --json "$OUT/bench_$dt.json" 2>&1 | tee "$OUT/bench_$dt.txt" || status=1
done
[ "${1:-}" = quick ] || $PY -m fusedconv bench --precision high --json "$OUT/bench_fp32_tf32.json" 2>&1 \
  | tee "$OUT/bench_fp32_tf32.txt" || status=1
[ "${1:-}" = quick ] || FUSEDCONV_FORCE_PTX=89 $PY -m fusedconv bench --json "$OUT/bench_fp32_sm89ptx.json" 2>&1 \
  | tee "$OUT/bench_fp32_sm89ptx.txt" || status=1

step "done, status $status"
exit $status
