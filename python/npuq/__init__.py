"""npuq: compress neural networks for an integer NPU, and emulate that NPU bit for bit.

The integer arithmetic is specified in ``docs/arithmetic.md``; :mod:`npuq.ops` runs it.
"""

from npuq import ops
from npuq._C import ARITHMETIC_VERSION, BUILT_WITH_CUDA
from npuq._tensors import LayoutWarning
from npuq.capi import get_include, get_library
from npuq.fixedpoint import (
    MultiplierFlushedWarning,
    quantize_bias,
    quantize_multiplier,
    quantize_multipliers,
)
from npuq.npu import Emulator, Program, ProgramError, load_program
from npuq.runtime import MAX_THREADS, cpu_features, get_num_threads, set_isa, set_num_threads


def _version() -> str:
    """The version of the installed distribution (pyproject.toml's, its one source); from a source tree
    that is not installed, pyproject.toml itself."""
    from importlib import metadata

    try:
        return metadata.version("npuq")
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()

# torch is an optional dependency: the quantization entry points import it on first use.
_LAZY = {
    "quantize": ("npuq.quant", "quantize"),
    "prepare": ("npuq.quant", "prepare"),
    "QuantizedModel": ("npuq.quant", "QuantizedModel"),
    "quant": ("npuq.quant", None),
    "compile": ("npuq.npu.compiler", "compile_model"),
    "CompileError": ("npuq.npu.compiler", "CompileError"),
    # the interop extra (tflite, flatbuffers) is imported when a model is read
    "from_tflite": ("npuq.interop.tflite_import", "from_tflite"),
    "interop": ("npuq.interop", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'npuq' has no attribute {name!r}")


__all__ = [
    "ARITHMETIC_VERSION",
    "BUILT_WITH_CUDA",
    "CompileError",
    "Emulator",
    "MAX_THREADS",
    "Program",
    "ProgramError",
    "compile",
    "from_tflite",
    "load_program",
    "LayoutWarning",
    "MultiplierFlushedWarning",
    "cpu_features",
    "get_include",
    "get_library",
    "get_num_threads",
    "ops",
    "prepare",
    "quantize",
    "quantize_bias",
    "quantize_multiplier",
    "quantize_multipliers",
    "set_isa",
    "set_num_threads",
]
