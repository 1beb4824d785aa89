#!/usr/bin/env bash
# The prepared GPU check: on a machine with a CUDA GPU and no network, in one go,
#   1. builds npuq with its CUDA kernels offline (pip --no-build-isolation against the installed
#      pybind11, scikit-build-core, cmake and ninja),
#   2. runs the GPU tests (tests marked `gpu`: bit-exactness against the oracle and the CPU emulator),
#   3. runs the GPU benchmarks (conv layers vs torch fp16/cuDNN, emulator vs the CPU emulator, truncated
#      SVD vs torch.svd_lowrank),
#   4. runs part of the GPU tests under compute-sanitizer memcheck,
#   5. writes a short report, report.md, next to the logs and JSON.
# Every stage has its own time limit and the script goes on after a failure, so one run gives all it can.
# Budget: about 10 minutes in all on an H200.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          (default: $OUT, else results/gpu_check)
#
# Environment: NPUQ_CUDA_ARCHS (default: the card's own, e.g. 90), NPUQ_GPU_PREBUILT (a folder of npuq
# wheels to install when the build fails), NPUQ_FASHION_MNIST (the data set's folder, for the trained-model
# tests), NPUQ_GPU_CHECK_QUICK=1 (smaller benchmarks), NPUQ_HYPOTHESIS_PROFILE (default "default"),
# NPUQ_GPU_{BUILD,TEST,BENCH,SVD,MEMCHECK}_LIMIT (seconds per stage), NPUQ_GPU_STAGES (default
# "build tests bench svd memcheck": the stages to run).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT_DIR="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
REPORT="$OUT_DIR/report.md"
SITE="${NPUQ_GPU_SITE:-/tmp/npuq_gpu_site}"
PY=${PYTHON:-python3}
START=$SECONDS
: > "$REPORT"

STAGES=" ${NPUQ_GPU_STAGES:-build tests bench svd memcheck} "
wants() { case "$STAGES" in *" $1 "*) return 0 ;; esac; return 1; }
note() { echo "$*" | tee -a "$REPORT"; }
stage() {  # stage NAME LIMIT_S LOG COMMAND...: run with a time limit, record rc and seconds
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s) ===" >&2
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$log" 2>&1
  local rc=$?
  note "- $name: rc $rc, $((SECONDS - t0)) s (log: $log)"
  return $rc
}

note "# npuq GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
note ""
note "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 | head -1)
note "GPU: $gpu"
note "python: $($PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1)"
note "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1
note ""
note "## Stages"

# 1. build ------------------------------------------------------------------------------------------
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
export NPUQ_CUDA_ARCHS="${NPUQ_CUDA_ARCHS:-${cap:-90}}"
if ! wants build; then
  built=skipped
elif rm -rf "$SITE" && stage "build (pip --no-build-isolation, CUDA archs $NPUQ_CUDA_ARCHS)" "${NPUQ_GPU_BUILD_LIMIT:-240}" build.log \
     env NPUQ_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" $PY -m pip install --no-build-isolation --no-deps \
     --no-index --target "$SITE" -Cbuild-dir=/tmp/npuq_gpu_build "$ROOT"; then
  built=source
elif [ -n "${NPUQ_GPU_PREBUILT:-}" ] && ls "$NPUQ_GPU_PREBUILT"/npuq-*.whl >/dev/null 2>&1; then
  tail -30 "$OUT_DIR/build.log" >&2
  stage "install the prebuilt wheel instead" 120 install_prebuilt.log \
    $PY -m pip install --no-deps --no-index --target "$SITE" "$NPUQ_GPU_PREBUILT"/npuq-*.whl && built=prebuilt || built=none
else
  built=none
fi
note "  npuq under test: $built"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'EOF' 2>&1 | tee -a "$REPORT"
import npuq
from npuq import _cuda
print("  npuq:", npuq.__file__, "| CUDA:", _cuda.info())
EOF

# 2. GPU tests ----------------------------------------------------------------------------------------
# (from tests/, so that `npuq` is the build under test, not the source tree)
wants tests && stage "GPU tests (pytest -m gpu)" "${NPUQ_GPU_TEST_LIMIT:-240}" tests.log \
  bash -c "cd '$ROOT/tests' && NPUQ_HYPOTHESIS_PROFILE=\${NPUQ_HYPOTHESIS_PROFILE:-default} $PY -m pytest -q -m gpu \
           -p no:cacheprovider -rs --durations=15 --junitxml='$OUT_DIR/tests.xml' ops/test_cuda_ops.py lrf/test_svd_cuda.py"
wants tests && note "  $(grep -E '(passed|failed|skipped|error)' "$OUT_DIR/tests.log" | tail -1)"

# 3. benchmarks ---------------------------------------------------------------------------------------
quick=()
[ "${NPUQ_GPU_CHECK_QUICK:-0}" = 1 ] && quick=(--quick)
wants bench && stage "conv + emulator benchmark" "${NPUQ_GPU_BENCH_LIMIT:-200}" bench.log \
  $PY "$ROOT/benchmarks/gpu_bench.py" --out "$OUT_DIR/gpu_bench.json" "${quick[@]}"
wants bench && grep -E "^conv:|^emulator:" "$OUT_DIR/bench.log" | sed 's/^/  /' | tee -a "$REPORT"
wants svd && stage "truncated SVD benchmark" "${NPUQ_GPU_SVD_LIMIT:-120}" svd.log \
  $PY "$ROOT/benchmarks/gpu_svd.py" --out "$OUT_DIR/gpu_svd.json" "${quick[@]}"
wants svd && tail -15 "$OUT_DIR/svd.log" | sed 's/^/    /' >> "$REPORT"

# 4. compute-sanitizer --------------------------------------------------------------------------------
if ! wants memcheck; then
  :
elif command -v compute-sanitizer >/dev/null; then
  stage "compute-sanitizer memcheck (GPU op tests, few examples)" "${NPUQ_GPU_MEMCHECK_LIMIT:-150}" memcheck.log \
    bash -c "cd '$ROOT/tests' && NPUQ_HYPOTHESIS_PROFILE=quick compute-sanitizer --tool memcheck --error-exitcode 99 \
             --target-processes all $PY -m pytest -q -m gpu -p no:cacheprovider -x ops/test_cuda_ops.py \
             -k 'not torchvision and not trained and not random_networks and not memory'"
  note "  $(grep -E 'ERROR SUMMARY' "$OUT_DIR/memcheck.log" | tail -1)"
else
  note "- compute-sanitizer: not found"
fi

note ""
note "total: $((SECONDS - START)) s"
