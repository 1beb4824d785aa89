#!/usr/bin/env bash
# Tests an installed wheel as a user gets it: a fresh venv, the wheel installed with pip, compilers and
# CMake out of PATH (so nothing can be built), and everything run from outside the checkout, so that
# nothing is imported from it: `npuq selftest`, the README's quick start, and the tests of the native
# ops and the program loader. With the data package's wheel as a second argument it also checks that a
# command needing a trained checkpoint says how to get one without it, and loads one with it.
# Usage: scripts/wheel_test.sh WHEEL [CHECKPOINTS_WHEEL]
set -euo pipefail
wheel="$(realpath "$1")"
data_wheel="${2:+$(realpath "$2")}"
repo="$(realpath "$(dirname "$0")/..")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
# the test dependencies (numpy comes with the wheel); torch from its pin, the CPU build
torch_pin="$(python3 -c "import tomllib; print(next(r for r in tomllib.load(open('$repo/pyproject.toml', 'rb'))['project']['optional-dependencies']['torch'] if r.startswith('torch')))")"
"$work/venv/bin/pip" install --quiet "$wheel" "$torch_pin" pytest hypothesis scipy
# a PATH with the venv and the basic tools only: no cc, c++, gcc, g++, cmake, ninja, make
mkdir "$work/bin"
for tool in sh bash env cat ls mkdir rm cp mv uname grep sed head tail sort tr wc dirname basename realpath mktemp; do
  found="$(command -v "$tool" || true)"
  [ -n "$found" ] && ln -s "$found" "$work/bin/$tool"
done
export PATH="$work/venv/bin:$work/bin"
for tool in cc c++ gcc g++ cmake ninja make; do
  if command -v "$tool" >/dev/null; then echo "wheel test: $tool is still on PATH" >&2; exit 1; fi
done
cd "$work"
python -c "import npuq, sys; p = npuq.__file__; sys.exit(0 if p.startswith('$work/venv/') else f'npuq imported from {p}')"
npuq --version
npuq selftest
# the README's quick start, as written
python - "$repo/README.md" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
quick = text.split("## Quick start", 1)[1]
code = re.search(r"```python\n(.*?)```", quick, re.S).group(1)
exec(compile(code, "README quick start", "exec"))
print("README quick start: ok")
PY
NPUQ_HYPOTHESIS_PROFILE=ci python -m pytest -q -p no:cacheprovider --rootdir="$repo" -c "$repo/pyproject.toml" \
  "$repo/tests/ops/test_conv2d.py" "$repo/tests/test_fixedpoint.py" "$repo/tests/npu/test_program.py" \
  "$repo/tests/test_selftest.py"
if [ -n "$data_wheel" ]; then
  set +e
  npuq compile --model mobilenet_v2_w0.5_sgd -o "$work/m.npuq" 2>"$work/err.txt"
  code=$?
  set -e
  if [ "$code" != 2 ] || ! grep -q "pip install 'npuq\[checkpoints\]'" "$work/err.txt"; then
    echo "wheel test: without npuq-checkpoints, compile should exit 2 naming the extra (exit $code):" >&2
    cat "$work/err.txt" >&2; exit 1
  fi
  pip install --quiet "$data_wheel" safetensors
  python -c "
from npuq.models.checkpoints import list_checkpoints, load_checkpoint
names = list_checkpoints()
assert len(names) == 4, names
model, meta = load_checkpoint(names[0])
print(f'checkpoints from the data package: {len(names)}, loaded {names[0]} ({meta[\"model\"]})')
"
fi
