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
# Fashion-MNIST (Debian's dataset-fashion-mnist) for the quantization benchmark and its tests.
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -z "${NPUQ_FASHION_MNIST:-}" ]; then
  case ",$extras," in
    *,test,*|*,demo,*|*,bench,*)
      if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
      else
        echo "the benchmark needs Fashion-MNIST: sudo apt-get install dataset-fashion-mnist" >&2
      fi ;;
  esac
fi
# torch is pinned to the CPU build; install it first so that nothing pulls a CUDA build.
case ",$extras," in
  *,test,*|*,bench,*|*,torch,*|*,demo,*) python3 -m pip install --quiet "torch==2.13.0" ;;
esac
# The tests run torchvision's model architectures (pure Python). PyPI's torchvision wheel depends on the
# CUDA build of torch, so it is installed without its dependencies next to the CPU build.
case ",$extras," in
  *,test,*) python3 -m pip install --quiet pillow && python3 -m pip install --quiet --no-deps "torchvision==0.28.0" ;;
esac
spec="."
[ -n "$extras" ] && spec=".[$extras]"
python3 -m pip install --quiet "$spec"
