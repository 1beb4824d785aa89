#!/usr/bin/env bash
# Installs what npuq needs on a fresh Debian machine: the build tools, then npuq itself with the
# extras named in $1 (e.g. "test" or "demo"). Safe to run more than once.
set -euo pipefail
extras="${1:-}"
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq cmake g++ ninja-build >/dev/null
  else
    echo "npuq needs cmake and a C++17 compiler (apt-get install cmake g++)" >&2
    exit 1
  fi
fi
# torch is pinned to the CPU build; install it first so that nothing pulls a CUDA build.
case ",$extras," in
  *,test,*|*,bench,*|*,torch,*) python3 -m pip install --quiet "torch==2.13.0" ;;
esac
spec="."
[ -n "$extras" ] && spec=".[$extras]"
python3 -m pip install --quiet "$spec"
