#!/usr/bin/env bash
# The self-test on a build without OpenMP (NPUQ_OPENMP=OFF; the CUDA kernels are left out to keep the
# build short): the wheel is built from this checkout and installed into a fresh venv. The self-test must
# pass on one thread and say that OpenMP is off, and asking it for threaded runs must fail with a clear
# message and exit 2. Usage: scripts/selftest_no_openmp.sh
set -euo pipefail
repo="$(realpath "$(dirname "$0")/..")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
NPUQ_OPENMP=OFF NPUQ_CUDA=OFF python3 -m pip wheel --quiet --no-deps "$repo" -w "$work/wheel" \
  --config-settings=build-dir="$work/build"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$work"/wheel/npuq-*.whl
cd "$work"
if ldd "$work"/venv/lib/python3*/site-packages/npuq/_C*.so | grep -q gomp; then
  echo "selftest without OpenMP: the build still links an OpenMP runtime" >&2; exit 1
fi
"$work/venv/bin/npuq" selftest | tee "$work/out.txt"
grep -q "OpenMP off" "$work/out.txt" || { echo "selftest without OpenMP: no 'OpenMP off' line" >&2; exit 1; }
set +e
"$work/venv/bin/npuq" selftest --threads 2 2>"$work/err.txt"
code=$?
set -e
cat "$work/err.txt"
if [ "$code" != 2 ] || ! grep -q "this build has no OpenMP" "$work/err.txt" || grep -q Traceback "$work/err.txt"; then
  echo "selftest without OpenMP: --threads 2 should exit 2 with a one-line message (exit $code)" >&2; exit 1
fi
echo "selftest without OpenMP: passed ($(( $(date +%s) - start )) s)"
