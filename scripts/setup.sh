#!/usr/bin/env bash
# Installs what npuq needs on a fresh Debian machine: the build tools, then npuq itself with the
# extras named in $1 (e.g. "test" or "demo"). Safe to run more than once.
set -euo pipefail
extras="${1:-}"
cd "$(dirname "$0")/.."
has_extra() {  # has_extra NAME...: whether $extras names one of them
  local e
  for e in "$@"; do case ",$extras," in *,"$e",*) return 0 ;; esac; done
  return 1
}
# Debian packages, collected first so that apt-get runs once:
packages=()
missing=()   # why each package is needed, for a user without root
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  packages+=(cmake g++ ninja-build); missing+=("npuq's build needs cmake and a C++17 compiler")
fi
# Fashion-MNIST (Debian's dataset-fashion-mnist) for the quantization benchmark and its tests.
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -z "${NPUQ_FASHION_MNIST:-}" ] \
   && has_extra test demo bench; then
  packages+=(dataset-fashion-mnist); missing+=("the benchmark needs Fashion-MNIST (dataset-fashion-mnist)")
fi
# espeak-ng synthesizes the connected-digits speech corpus of npuq.speech.
if ! command -v espeak-ng >/dev/null && has_extra test demo bench speech; then
  packages+=(espeak-ng); missing+=("the speech corpus needs espeak-ng")
fi
# PostgreSQL's server for the distributed rank-search test (it starts a throw-away server with
# scripts/test_postgres.sh).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && has_extra test; then
  packages+=(postgresql); missing+=("the distributed rank-search test needs a PostgreSQL server (postgresql)")
fi
# Verilator and Icarus Verilog run the RTL example's test benches (examples/rtl, tests/rtl).
if has_extra test; then
  command -v verilator >/dev/null || { packages+=(verilator); missing+=("the RTL test benches need verilator"); }
  command -v iverilog >/dev/null || { packages+=(iverilog); missing+=("the RTL test benches need iverilog"); }
fi
if [ "${#packages[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    printf '%s\n' "${missing[@]}" >&2
    echo "install them with: sudo apt-get install ${packages[*]}" >&2
    command -v cmake >/dev/null && command -v g++ >/dev/null || exit 1
  fi
fi
# torch is pinned to the CPU build; install it first so that nothing pulls a CUDA build. The pin is read
# from pyproject.toml's torch extra (written once there), for the extras that include it.
torch_pin="$(python3 - "$extras" <<'EOF'
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
wanted = [e for e in sys.argv[1].split(",") if e]
if "torch" in wanted or any("npuq[torch]" in extras.get(e, ()) for e in wanted):
    print(next(r for r in extras["torch"] if r.partition("==")[0].strip() == "torch"))
EOF
)"
if [ -n "$torch_pin" ]; then
  python3 -m pip install --quiet "$torch_pin"
fi
# The tests run torchvision's model architectures (pure Python). PyPI's torchvision wheel depends on the
# CUDA build of torch, so it is installed without its dependencies next to the CPU build.
case ",$extras," in
  *,test,*) python3 -m pip install --quiet pillow && python3 -m pip install --quiet --no-deps "torchvision==0.28.0" ;;
esac
# The trained checkpoints are the data package npuq-checkpoints, pinned by the checkpoints extra and not on
# PyPI: when the extras include it (directly or through another extra), its folder goes into the same pip
# call as npuq, so that pip's resolver takes the local package for the pin.
wants_checkpoints="$(python3 - "$extras" <<'EOF'
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
todo, seen = [e for e in sys.argv[1].split(",") if e], set()
while todo:  # the extras named, and those they name as npuq[...], transitively
    extra = todo.pop()
    if extra in seen or extra not in extras:
        continue
    seen.add(extra)
    todo += [n for r in extras[extra] if r.startswith("npuq[") for n in r[len("npuq[") : -1].split(",")]
if "checkpoints" in seen:
    print("yes")
EOF
)"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
if [ -n "$wants_checkpoints" ]; then
  python3 -m pip install --quiet ./packages/npuq-checkpoints "$spec"
else
  python3 -m pip install --quiet "$spec"
fi
