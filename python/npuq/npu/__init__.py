"""The NPU side of npuq: the program format, the compiler, the emulator, golden test vectors and the
cost model.

* :class:`Program` / :func:`load_program` — a quantized network as integer ops (``docs/program.md``);
* :func:`compile_model` (``npuq.compile``) — a :class:`npuq.QuantizedModel` -> :class:`Program`;
* :class:`Emulator` — runs a program bit-exactly on the native kernels;
* ``npuq.npu.optable.OP_TABLE`` — one entry per op kind, the only place the loader, the emulator, the
  cost model and the golden vectors learn about kinds (``docs/program.md`` 7).

Everything but the compiler needs numpy only.
"""

from npuq.npu.emulator import Emulator
from npuq.npu.program import FORMAT_VERSION, InputSpec, Op, Program, ProgramError, load_program


def __getattr__(name):
    if name in ("compile_model", "CompileError"):
        from npuq.npu import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module 'npuq.npu' has no attribute {name!r}")


__all__ = [
    "CompileError",
    "Emulator",
    "FORMAT_VERSION",
    "InputSpec",
    "Op",
    "Program",
    "ProgramError",
    "compile_model",
    "load_program",
]
